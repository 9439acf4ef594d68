"""Both state stores against the same contract; the Redis one against a real redis-server."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.crc import key_slot

from notebook_state.store import (
    Commit,
    Fence,
    LocalStore,
    RedisStore,
    Renewal,
    SessionRecord,
    StaleEpoch,
    StateStore,
    redis_store,
)
from notebook_state.store.redis_store import KEEP_SPAN
from tests.redis_server import RedisServer, redis_server


@pytest.fixture(scope="module")
def redis_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as srv:
        yield srv


@pytest.fixture(params=["redis", "local"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StateStore]:
    s: StateStore
    if request.param == "redis":
        srv: RedisServer = request.getfixturevalue("redis_srv")
        s = RedisStore(srv.url, session_ttl=600)
    else:
        s = LocalStore(tmp_path / "local", session_ttl=600)
    yield s
    await s.close()


def record(session_id: str, tenant: str = "") -> SessionRecord:
    return SessionRecord(id=session_id, kernel_name="python3", created=time.time(), tenant=tenant)


async def renew(store: StateStore, s: str, owner: str, url: str, fence: Fence, ttl: float, ran: int = 0) -> bool:
    (ok,) = await store.renew_many([Renewal(s, owner, url, fence, ran)], ttl)
    return ok is True


def commit_of(rec: SessionRecord, blobs: dict[str, bytes], keep: list[str], drop: list[str]) -> Commit:
    return Commit(manifest=b'{"m": 1}', manifest_sig="sig", blobs=blobs, keep=keep, drop=drop, record=rec)


def sid(name: str) -> str:
    return f"{name}-{os.urandom(4).hex()}"


async def test_create_get_list_delete(store: StateStore) -> None:
    s = sid("crud")
    assert await store.create(record(s)) is True
    assert await store.create(record(s)) is False
    got = await store.get(s)
    assert got is not None
    assert got.kernel_name == "python3"
    assert s in [r.id for r in await store.list_sessions()]
    await store.delete(s)
    assert await store.get(s) is None
    assert s not in [r.id for r in await store.list_sessions()]


async def test_lease_epochs_increase_and_fence(store: StateStore) -> None:
    s = sid("lease")
    await store.create(record(s))
    e1 = await store.acquire(s, "A", "http://a", ttl=30)
    assert e1 is not None and e1.epoch == 1
    assert await renew(store, s, "A", "http://a", e1, ttl=30, ran=3)
    got = await store.get(s)
    assert got is not None and got.lease is not None
    assert (got.lease.owner, got.lease.url, got.lease.epoch) == ("A", "http://a", 1)
    assert got.ran == 3  # what ran, committed or not: a later owner names what was never saved
    if isinstance(store, RedisStore):
        # A live holder keeps the session from others, unless they prove it gone with the current epoch.
        assert await store.acquire(s, "B", "http://b", ttl=30) is None
        assert await store.acquire(s, "B", "http://b", ttl=30, steal=0) is None
    e2 = await store.acquire(s, "B", "http://b", ttl=30, steal=e1.epoch)
    assert e2 is not None and e2.epoch > e1.epoch
    # A's lease is gone: it can neither renew nor commit.
    assert not await renew(store, s, "A", "http://a", e1, ttl=30)
    rec = record(s)
    with pytest.raises(StaleEpoch):
        await store.commit(s, e1, commit_of(rec, {}, [], []), ttl=600)
    with pytest.raises(StaleEpoch):  # what a stale commit carries is not written either
        await store.commit(s, e1, commit_of(rec, {"g:stale": b"x"}, [], []), ttl=600)
    assert await store.load_blobs(s, ["g:stale"]) == {}
    # The epoch alone is not the token: the same epoch with another nonce (as a failover that lost an INCR
    # could issue twice) is fenced off too.
    with pytest.raises(StaleEpoch):
        await store.commit(s, Fence(e2.epoch, "another-nonce"), commit_of(rec, {}, [], []), ttl=600)
    assert not await renew(store, s, "B", "http://b", Fence(e2.epoch, "another-nonce"), ttl=30)
    await store.commit(s, e2, commit_of(rec, {}, [], []), ttl=600)
    await store.release(s, "B", e2)
    got = await store.get(s)
    assert got is not None and got.lease is None
    e3 = await store.acquire(s, "C", "http://c", ttl=30)
    assert e3 is not None and e3.epoch > e2.epoch


async def test_renewals_of_many_leases_are_answered_one_by_one(store: StateStore) -> None:
    ids = [sid("many") for _ in range(3)]
    fences = []
    for s in ids:
        await store.create(record(s))
        fence = await store.acquire(s, "A", "http://a", ttl=30)
        assert fence is not None
        fences.append(fence)
    stolen = await store.acquire(ids[1], "B", "http://b", ttl=30, steal=fences[1].epoch)
    assert stolen is not None
    renewals = [Renewal(s, "A", "http://a", f) for s, f in zip(ids, fences, strict=True)]
    assert await store.renew_many(renewals, 30) == [True, False, True]
    assert await store.renew_many([], 30) == []


async def test_listing_pages_through_one_tenants_sessions(store: StateStore) -> None:
    tenant = sid("tenant")
    ids = []
    for i in range(5):
        rec = record(sid(f"page{i}"), tenant)
        rec.created += i  # distinct creation times: the listing is in creation order
        assert await store.create(rec)
        ids.append(rec.id)
    await store.create(record(sid("other"), sid("tenant")))
    first = await store.list_sessions(tenant, limit=2)
    second = await store.list_sessions(tenant, limit=2, after=first[-1].id)
    rest = await store.list_sessions(tenant, limit=10, after=second[-1].id)
    assert [r.id for r in first + second + rest] == ids
    await store.delete(ids[2])
    assert [r.id for r in await store.list_sessions(tenant)] == ids[:2] + ids[3:]


async def test_expired_lease_is_free(store: StateStore) -> None:
    s = sid("expiry")
    await store.create(record(s))
    await store.acquire(s, "A", "http://a", ttl=0.2)
    time.sleep(0.4)
    assert await store.acquire(s, "B", "http://b", ttl=30) is not None


async def test_commit_blobs_roundtrip_chunked_and_dropped(store: StateStore) -> None:
    s = sid("blobs")
    rec = record(s)
    await store.create(rec)
    epoch = await store.acquire(s, "A", "http://a", ttl=30)
    assert epoch is not None
    big = os.urandom(20 * 1024 * 1024 + 123)  # larger than a chunk
    await store.commit(s, epoch, commit_of(rec, {"g1:h1": big, "g2:h2": b"small"}, [], []), ttl=600)
    loaded = await store.load_blobs(s, ["g1:h1", "g2:h2", "missing"])
    assert {k: b"".join(v) for k, v in loaded.items()} == {"g1:h1": big, "g2:h2": b"small"}
    assert await store.load_manifest(s) == (b'{"m": 1}', "sig")
    await store.commit(s, epoch, commit_of(rec, {"g2:h3": b"new"}, ["g1:h1"], ["g2:h2"]), ttl=600)
    loaded = await store.load_blobs(s, ["g1:h1", "g2:h2", "g2:h3"])
    assert {k: b"".join(v) for k, v in loaded.items()} == {"g1:h1": big, "g2:h3": b"new"}


async def test_redis_keys_share_the_hash_tag_expire_and_are_deleted(redis_srv: RedisServer) -> None:
    store = RedisStore(redis_srv.url, session_ttl=120)
    s = sid("tags")
    rec = record(s)
    await store.create(rec)
    epoch = await store.acquire(s, "A", "http://a", ttl=30)
    assert epoch is not None
    await store.commit(s, epoch, commit_of(rec, {"g:h": b"x" * 100}, [], []), ttl=120)
    client = redis_srv.client()
    keys = [k.decode() for k in client.keys(f"*{s}*")]
    assert len(keys) >= 5
    for key in keys:
        assert f"{{{s}}}" in key
        blobs = key.endswith(":blobs") or ":blob:" in key  # a little longer: see redis_store.KEEP_SPAN
        assert 0 < client.pttl(key) <= 120_000 * (1 + KEEP_SPAN if blobs else 1)
    assert len({key_slot(k.encode()) for k in keys}) == 1
    await store.delete(s)
    assert client.keys(f"*{s}*") == []
    await store.close()


class Clock:
    """``time`` as the Redis store sees it, with a monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.time = time.time

    def monotonic(self) -> float:
        return self.now


async def test_redis_blobs_outlive_their_manifest_with_few_extensions(
    redis_srv: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    monkeypatch.setattr(redis_store, "time", clock)
    ttl = 800.0
    store = RedisStore(redis_srv.url, session_ttl=ttl)
    client = redis_srv.client()
    s = sid("keep")
    rec = record(s)
    await store.create(rec)
    fence = await store.acquire(s, "A", "http://a", ttl=30)
    assert fence is not None
    blob = f"skg:{{{s}}}:blob:old:h"
    try:
        await store.commit(s, fence, commit_of(rec, {"old:h": b"x"}, [], []), ttl=ttl)
        assert client.pttl(blob) > ttl * 1000 * (1 + KEEP_SPAN) - 5000  # new: its full time
        client.pexpire(blob, 500_000)  # as though set a while ago
        rec.execution_count, rec.variables, rec.env = 7, ["x", "é"], {"KERNEL_A": "b"}
        clock.now += ttl * KEEP_SPAN / 4  # extended too recently to extend again
        await store.commit(s, fence, commit_of(rec, {"new:h": b"y"}, ["old:h"], []), ttl=ttl)
        assert client.pttl(blob) <= 500_000
        got = await store.get(s)
        assert got is not None and (got.execution_count, got.variables, got.env) == (7, ["x", "é"], {"KERNEL_A": "b"})
        assert got.ran == 7
        clock.now += ttl * KEEP_SPAN / 4 + 1  # now due: half its extra time is gone
        await store.commit(s, fence, commit_of(rec, {}, ["old:h", "new:h"], []), ttl=ttl)
        assert client.pttl(blob) > ttl * 1000 * (1 + KEEP_SPAN) - 5000
        assert client.pttl(blob) > client.pttl(f"skg:{{{s}}}:manifest")
        await store.delete(s)
        assert client.keys(f"*{s}*") == []
    finally:
        await store.close()


async def test_local_store_is_single_process(tmp_path: Path) -> None:
    from notebook_state.store import StoreUnavailable

    first = LocalStore(tmp_path / "db", 60)
    with pytest.raises(StoreUnavailable, match="in use"):
        LocalStore(tmp_path / "db", 60)
    await first.close()
    second = LocalStore(tmp_path / "db", 60)
    await second.close()


async def test_local_store_checkpoints_its_write_ahead_log(tmp_path: Path) -> None:
    # Small commits run on the event loop without syncing; the WAL is folded into the database every few
    # hundred transactions (in a thread), so it neither grows without bound nor loses what was committed.
    store = LocalStore(tmp_path / "local", session_ttl=600)
    wal = tmp_path / "local" / "sessions.sqlite3-wal"
    try:
        rec = record(sid("wal"))
        assert await store.create(rec)
        fence = await store.acquire(rec.id, "A", "http://a", ttl=30)
        assert fence is not None
        sizes = []
        for n in range(1, 700):
            rec.execution_count = n
            await store.commit(rec.id, fence, commit_of(rec, {f"k{n}": b"x" * 2048}, [], [f"k{n - 1}"]), 600)
            sizes.append(wal.stat().st_size)
        assert min(sizes[400:]) < max(sizes[:400])  # truncated at a checkpoint in between
        got = await store.get(rec.id)
        assert got is not None and got.execution_count == 699
        assert await store.load_blobs(rec.id, ["k699", "k698"]) == {"k699": [b"x" * 2048]}
    finally:
        await store.close()


async def test_a_redis_that_stops_answering_fails_the_call_and_its_late_reply_is_not_read(tmp_path: Path) -> None:
    """A call bounded as a whole (no socket timeout): the connection it gave up on is dropped, so the reply
    Redis sends once it runs again never answers the next call."""
    import signal

    from notebook_state.store import StoreUnavailable

    with redis_server(tmp_path) as srv:
        store = RedisStore(srv.url, session_ttl=600, timeout=0.5)
        try:
            a, b = record(sid("a")), record(sid("b"))
            assert await store.create(a) and await store.create(b)
            assert srv.proc is not None
            srv.proc.send_signal(signal.SIGSTOP)
            try:
                with pytest.raises(StoreUnavailable, match="did not answer"):
                    await store.get(a.id)
            finally:
                srv.proc.send_signal(signal.SIGCONT)
            got = await store.get(b.id)
            assert got is not None and got.id == b.id
            got = await store.get(a.id)
            assert got is not None and got.id == a.id
        finally:
            await store.close()


async def test_the_fenced_scripts_survive_a_script_flush_and_killed_connections(redis_srv: RedisServer) -> None:
    """Commit and acquire load their script again after a NOSCRIPT (a Redis restarted without them), and go
    on a fresh connection when the pooled one was closed under them, as redis-py's own script call does."""
    store = RedisStore(redis_srv.url, session_ttl=600)
    admin = redis_srv.client()
    try:
        s = sid("noscript")
        rec = record(s)
        await store.create(rec)
        fence = await store.acquire(s, "A", "http://a", ttl=30)
        assert fence is not None
        await store.commit(s, fence, commit_of(rec, {"g1:h1": b"one"}, [], []), ttl=600)
        admin.script_flush()
        await store.commit(s, fence, commit_of(rec, {"g1:h2": b"two"}, [], ["g1:h1"]), ttl=600)
        killed = admin.execute_command("CLIENT KILL TYPE normal SKIPME yes")
        assert killed >= 1  # the store's pooled connection
        await store.commit(s, fence, commit_of(rec, {"g1:h3": b"three"}, [], ["g1:h2"]), ttl=600)
        loaded = await store.load_blobs(s, ["g1:h1", "g1:h2", "g1:h3"])
        assert {k: b"".join(v) for k, v in loaded.items()} == {"g1:h3": b"three"}
        admin.script_flush()
        admin.execute_command("CLIENT KILL TYPE normal SKIPME yes")
        await store.release(s, "A", fence)
        again = await store.acquire(s, "B", "http://b", ttl=30)
        assert again is not None and again.epoch == fence.epoch + 1
        with pytest.raises(StaleEpoch):  # the old owner's fence no longer holds
            await store.commit(s, fence, commit_of(rec, {"g1:h4": b"four"}, [], []), ttl=600)
    finally:
        admin.close()
        await store.close()
