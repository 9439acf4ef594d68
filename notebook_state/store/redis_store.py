"""The Redis state store, on one Redis or a Redis Cluster.

Every key of a session shares the ``{session_id}`` hash tag, so each session lives in one cluster slot and
every multi-key step is one Lua script there: no cross-slot transaction, no keyspace scan (a session's blob
keys are listed in its ``blobs`` set). Writes are fenced by the lease's token (epoch + nonce) inside the
scripts. A tenant's session index is a sorted set paged by member, never read whole.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .base import LIST_LIMIT, Commit, Fence, Lease, Renewal, SessionRecord, StaleEpoch, StoreUnavailable
from .redis_client import RedisClient, connect
from .redis_scripts import ACQUIRE, COMMIT, CREATE, RELEASE, RENEW

CHUNK = 8 * 1024 * 1024
T = TypeVar("T")

# New blobs up to this size travel inside the commit script: one round trip for a typical cell.
INLINE_BLOBS = 1024 * 1024

KEEP_SPAN = 0.125
"""A session's blob keys live this fraction of the session TTL longer than its other keys, so that a blob its
manifest still references needs its time to live extended only every ``KEEP_SPAN / 2`` of the TTL, not by every
commit: naming every unchanged blob of the session in each cell's commit cost a growing list of arguments."""
_REFRESHED = 10_000
"""Sessions whose blobs' last extensions this replica remembers; past that it forgets them all (and extends)."""


def _k(session_id: str, part: str) -> str:
    return f"skg:{{{session_id}}}:{part}"


def _blob_key(session_id: str, key: str) -> str:
    return _k(session_id, f"blob:{key}")


def index_key(tenant: str) -> str:
    """A tenant's session index: its own key (and slot), so listing one tenant never reads another's."""
    return f"skg:index:{{t:{tenant}}}"


def index_member(record: SessionRecord) -> str:
    """Ordered by creation time, then id: members sort lexicographically, so a page is one ZRANGE BYLEX."""
    return f"{record.created:020.6f}|{record.id}"


class RedisStore:
    def __init__(
        self,
        url: str,
        session_ttl: float,
        password: str | None = None,
        *,
        cluster: bool = False,
        timeout: float = 2.0,
        wait_replicas: int = 0,
    ) -> None:
        self._client: RedisClient = connect(url, password, cluster=cluster, timeout=timeout)
        self._redis = self._client.redis
        self._ttl_ms = int(session_ttl * 1000)
        self._blob_ttl_ms = int(session_ttl * (1 + KEEP_SPAN) * 1000)
        self._keep_every = session_ttl * KEEP_SPAN / 2
        # session id -> its blob keys (as commits name them) -> when this replica last set their time to live
        self._refreshed: dict[str, dict[str, float]] = {}
        self._wait = wait_replicas
        self._timeout = timeout
        self._wait_ms = max(int(timeout * 500), 10)  # half the call's timeout: WAIT answers before the call gives up
        self._scripts = {text: self._redis.register_script(text) for text in (ACQUIRE, COMMIT, CREATE, RELEASE)}

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """One store call, all its round trips (and a retry on a fresh connection) within the timeout."""
        try:
            async with asyncio.timeout(self._timeout):
                return await fn()
        except StaleEpoch:
            raise
        except TimeoutError as exc:  # before OSError, of which it is one
            raise StoreUnavailable(f"Redis did not answer within {self._timeout:g} s") from exc
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise StoreUnavailable(f"Redis is unreachable: {exc}") from exc
        except RedisError as exc:
            raise StoreUnavailable(f"Redis error: {exc}") from exc

    async def _replicated(self, session_id: str, script: str, keys: list[str], args: list[Any]) -> Any:
        """Run a fenced script; with ``wait_replicas``, answer only once that many replicas have it (WAIT on
        the same connection, which is what WAIT counts)."""
        if self._wait == 0:
            return await self._client.evalsha(self._scripts[script], keys, args)
        result, acked = await self._client.eval_and_wait(_k(session_id, "meta"), script, keys, args,
                                                         self._wait, self._wait_ms)  # fmt: skip
        if acked < self._wait:
            raise StoreUnavailable(f"only {acked} of {self._wait} Redis replicas acknowledged the write in time")
        return result

    async def ping(self) -> None:
        await self._call(self._client.ping)

    async def create(self, record: SessionRecord) -> bool:
        fields = record.to_fields()
        args: list[Any] = [self._ttl_ms]
        for name, value in fields.items():
            args += [name, value]

        index, member = index_key(record.tenant), index_member(record)

        async def run() -> bool:
            # The index is another slot, so it is a separate command, written first: an entry whose session
            # does not exist is pruned by the next listing that meets it, while a session must never be
            # missing from its index.
            await self._redis.zadd(index, {member: 0})
            if not await self._scripts[CREATE](keys=[_k(record.id, "meta")], args=args):
                await self._redis.zrem(index, member)
                return False
            return True

        return await self._call(run)

    async def get(self, session_id: str) -> SessionRecord | None:
        async def run() -> SessionRecord | None:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(_k(session_id, "meta"))
                pipe.hgetall(_k(session_id, "lease"))
                pipe.pttl(_k(session_id, "lease"))
                meta, lease, pttl = await pipe.execute()
            if not meta:
                return None
            return SessionRecord.from_fields(session_id, _decode(meta), _lease(lease, pttl))

        return await self._call(run)

    async def list_sessions(
        self, tenant: str = "", limit: int = LIST_LIMIT, after: str | None = None
    ) -> list[SessionRecord]:
        index = index_key(tenant)

        async def page(start: bytes) -> tuple[list[SessionRecord], list[bytes], bytes | None]:
            raw: list[bytes] = await self._redis.zrangebylex(index, start, b"+", start=0, num=limit)
            ids = [bytes(m).decode().partition("|")[2] for m in raw]
            async with self._redis.pipeline(transaction=False) as pipe:
                for session_id in ids:
                    pipe.hgetall(_k(session_id, "meta"))
                    pipe.hgetall(_k(session_id, "lease"))
                    pipe.pttl(_k(session_id, "lease"))
                found = await pipe.execute()
            records, expired = [], []
            for i, session_id in enumerate(ids):
                meta, lease, pttl = found[3 * i : 3 * i + 3]
                if meta:
                    records.append(SessionRecord.from_fields(session_id, _decode(meta), _lease(lease, pttl)))
                else:
                    expired.append(raw[i])
            return records, expired, (b"(" + bytes(raw[-1])) if len(raw) == limit else None

        async def run() -> list[SessionRecord]:
            start = b"-"
            if after is not None:
                cursor = await self.get(after)
                if cursor is not None:
                    start = b"(" + index_member(cursor).encode()
            records: list[SessionRecord] = []
            # Expired sessions leave index entries behind; prune them as pages meet them (bounded: a few pages).
            for _ in range(8):
                found, expired, next_start = await page(start)
                records += found
                if expired:
                    await self._redis.zrem(index, *expired)
                if next_start is None or len(records) >= limit:
                    break
                start = next_start
            return records[:limit]

        return await self._call(run)

    async def delete(self, session_id: str) -> None:
        self._refreshed.pop(session_id, None)

        async def run() -> None:
            meta = await self._redis.hgetall(_k(session_id, "meta"))
            blobs: set[bytes] = await self._redis.smembers(_k(session_id, "blobs"))
            parts = ("meta", "lease", "epoch", "nonce", "manifest", "blobs")
            # One slot (the hash tag): one DEL of every key the session has.
            await self._redis.delete(*(_k(session_id, p) for p in parts), *(bytes(b).decode() for b in blobs))
            if meta:
                record = SessionRecord.from_fields(session_id, _decode(meta), None)
                await self._redis.zrem(index_key(record.tenant), index_member(record))

        await self._call(run)

    async def acquire(
        self, session_id: str, owner: str, url: str, ttl: float, steal: int | None = None
    ) -> Fence | None:
        keys = [_k(session_id, p) for p in ("lease", "epoch", "meta", "nonce")]
        nonce = Fence.new(0).nonce
        args: list[Any] = [owner, url, int(ttl * 1000), "" if steal is None else steal, self._ttl_ms, nonce]
        result = int(await self._call(lambda: self._replicated(session_id, ACQUIRE, keys, args)))
        return Fence(result, nonce) if result > 0 else None

    async def renew_many(self, renewals: list[Renewal], ttl: float) -> list[bool | None]:
        if not renewals:
            return []

        async def run() -> list[bool | None]:
            async with self._redis.pipeline(transaction=False) as pipe:
                for r in renewals:
                    keys = [_k(r.session_id, p) for p in ("lease", "epoch", "nonce", "meta")]
                    args = [r.owner, r.fence.epoch, r.fence.nonce, int(ttl * 1000), r.url, r.ran, self._ttl_ms]
                    pipe.eval(RENEW, len(keys), *keys, *args)
                results = await pipe.execute(raise_on_error=False)
            if all(isinstance(x, Exception) for x in results):
                raise results[0]
            return [None if isinstance(x, Exception) else bool(x) for x in results]

        return await self._call(run)

    async def release(self, session_id: str, owner: str, fence: Fence) -> None:
        keys = [_k(session_id, "lease"), _k(session_id, "nonce")]
        await self._call(lambda: self._scripts[RELEASE](keys=keys, args=[owner, fence.epoch, fence.nonce]))

    async def commit(self, session_id: str, fence: Fence, commit: Commit, ttl: float) -> None:
        ttl_ms, blob_ttl_ms = self._ttl_ms, self._blob_ttl_ms
        inline = sum(len(b) for b in commit.blobs.values()) <= INLINE_BLOBS
        blobset = _k(session_id, "blobs")

        async def write_blobs() -> None:
            if not commit.blobs or inline:
                return
            # Blobs are content-addressed (group id + hash): writing one that is never referenced is harmless,
            # so they go first and the fenced manifest swap below is what makes the checkpoint current.
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, data in commit.blobs.items():
                    bkey = _blob_key(session_id, key)
                    pipe.delete(bkey)
                    view = memoryview(data)
                    chunks: list[Any] = [view[i : i + CHUNK] for i in range(0, len(data), CHUNK)] or [b""]
                    pipe.rpush(bkey, *chunks)
                    pipe.pexpire(bkey, blob_ttl_ms)
                    pipe.sadd(blobset, bkey)
                pipe.pexpire(blobset, blob_ttl_ms)
                await pipe.execute()

        await self._call(write_blobs)
        refreshed, now = self._refreshed.get(session_id, {}), time.monotonic()
        due = now - self._keep_every
        kept = [k for k in commit.keep if refreshed.get(k, -math.inf) < due]
        keep = [_blob_key(session_id, k) for k in kept]
        drop = [_blob_key(session_id, k) for k in commit.drop]
        new = list(commit.blobs.items()) if inline else []
        keys = [
            _k(session_id, "epoch"), _k(session_id, "nonce"), _k(session_id, "manifest"), _k(session_id, "meta"),
            blobset, *keep, *drop, *(_blob_key(session_id, k) for k, _ in new),
        ]  # fmt: skip
        fields = orjson.dumps({**commit.record.to_fields(), "ran": str(commit.record.execution_count)})
        args: list[Any] = [fence.epoch, fence.nonce, commit.manifest, commit.manifest_sig, ttl_ms,
                           len(keep), len(drop), fields, blob_ttl_ms]  # fmt: skip
        args += [data for _, data in new]
        ok = await self._call(lambda: self._replicated(session_id, COMMIT, keys, args))
        if not ok:
            raise StaleEpoch(f"session {session_id!r}: epoch {fence.epoch} is no longer current")
        if session_id not in self._refreshed and len(self._refreshed) >= _REFRESHED:
            self._refreshed.clear()
        # Only what this checkpoint references; ``now`` was taken before the script ran: they live longer.
        self._refreshed[session_id] = {
            k: now if k in commit.blobs else refreshed.get(k, -math.inf) for k in (*commit.keep, *commit.blobs)
        }
        self._refreshed[session_id].update(dict.fromkeys(kept, now))

    async def load_manifest(self, session_id: str) -> tuple[bytes, str] | None:
        found: list[Any] = await self._call(lambda: self._redis.hmget(_k(session_id, "manifest"), ["data", "sig"]))
        data, sig = found
        if data is None or sig is None:
            return None
        return bytes(data), sig.decode()

    async def load_blobs(self, session_id: str, keys: list[str]) -> dict[str, list[bytes]]:
        async def run() -> dict[str, list[bytes]]:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.lrange(_blob_key(session_id, key), 0, -1)
                results = await pipe.execute()
            return {key: chunks for key, chunks in zip(keys, results, strict=True) if chunks}

        return await self._call(run)

    async def close(self) -> None:
        await self._client.close()


def _decode(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


def _lease(raw: dict[bytes, bytes], pttl: int) -> Lease | None:
    """The lease, live for as long as the store itself keeps it: its expiry comes from the key's remaining time
    to live, so replicas whose clocks disagree still agree on when it lapses."""
    if not raw or pttl is None or pttl <= 0:
        return None
    fields = _decode(raw)
    return Lease(
        owner=fields.get("owner", ""),
        url=fields.get("url", ""),
        epoch=int(fields.get("epoch") or 0),
        expires_at=time.time() + pttl / 1000,
    )
