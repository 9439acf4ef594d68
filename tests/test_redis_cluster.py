"""The Redis store on a real Redis Cluster (3 masters, 3 replicas, on loopback): every key of a session in one
slot, no cross-slot transaction, no keyspace scan, listings paged by index; and a session that survives the
failover of the master holding it, with no acknowledged cell lost."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from notebook_state.store import Commit, RedisStore, Renewal, SessionRecord
from notebook_state.store.redis_store import INLINE_BLOBS
from tests.counter_clients import INIT, RestCounter, final_state, rest, verdict, wait_until
from tests.redis_cluster import LocalCluster, redis_cluster
from tests.service import start_service

SIGNING_KEY = "0123456789abcdef0123456789abcdef"
TOKEN = "fault-token"  # the counter clients of tests.fault_rig send this one


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with redis_cluster(tmp_path_factory.mktemp("cluster")) as c:
        yield c


def keys_of(cluster: LocalCluster, session: str) -> list[bytes]:
    return [k for node in cluster.live() for k in cluster.client(node.port).keys(f"*{{{session}}}*")]


async def test_the_store_keeps_each_session_in_one_slot_and_pages_its_listing(cluster: LocalCluster) -> None:
    store = RedisStore(cluster.url, session_ttl=600, wait_replicas=1)
    tenant = f"t{os.urandom(3).hex()}"
    ids = [f"s{i}-{os.urandom(3).hex()}" for i in range(6)]
    fences = []
    for i, sid in enumerate(ids):
        assert await store.create(SessionRecord(id=sid, kernel_name="python3", created=time.time() + i, tenant=tenant))
        fence = await store.acquire(sid, "A", "http://a", ttl=30)
        assert fence is not None
        fences.append(fence)
    masters = {cluster.master_port_of(f"skg:{{{sid}}}:meta") for sid in ids}
    assert len(masters) > 1  # the sessions are spread over the cluster, not on one node
    renewals = [Renewal(sid, "A", "http://a", f, ran=1) for sid, f in zip(ids, fences, strict=True)]
    assert await store.renew_many(renewals, 30) == [True] * len(ids)
    sid, fence = ids[0], fences[0]
    record = SessionRecord(id=sid, kernel_name="python3", created=time.time(), tenant=tenant)
    big, small = os.urandom(INLINE_BLOBS + 1), b"small"
    for blobs in ({"g1:h": big}, {"g2:h": small}):  # written before the fenced script, and inside it
        commit = Commit(b'{"m": 1}', "sig", blobs, keep=[k for k in ("g1:h",) if k not in blobs], drop=[],
                        record=record)  # fmt: skip
        await store.commit(sid, fence, commit, ttl=600)  # WAIT 1: replicated before it returns
    loaded = await store.load_blobs(sid, ["g1:h", "g2:h"])
    assert {k: b"".join(v) for k, v in loaded.items()} == {"g1:h": big, "g2:h": small}
    keys = keys_of(cluster, sid)
    assert len(keys) >= 7
    slots = {int(cluster.client(cluster.live()[0].port).execute_command("CLUSTER", "KEYSLOT", k)) for k in keys}
    assert len(slots) == 1
    first = await store.list_sessions(tenant, limit=4)
    rest_of = await store.list_sessions(tenant, limit=4, after=first[-1].id)
    assert [r.id for r in first + rest_of] == ids
    await store.delete(sid)
    assert keys_of(cluster, sid) == []
    assert [r.id for r in await store.list_sessions(tenant)] == ids[1:]
    await store.close()


@dataclass
class Endpoint:
    name: str
    url: str


def test_a_session_survives_the_failover_of_its_master(tmp_path: Path, cluster: LocalCluster) -> None:
    env = {"SKG_REDIS_URL": cluster.url, "SKG_SIGNING_KEY": SIGNING_KEY}
    args = ["--pool-size", "1", "--lease-ttl", "3", "--redis-wait-replicas", "1"]
    with ExitStack() as stack:
        services = []
        for name in ("a", "b"):
            svc = start_service(tmp_path / name, args, token=TOKEN, env=env)
            stack.callback(svc.stop)
            services.append(Endpoint(name, svc.url))
        sid = rest(services[0], INIT)["session"]
        client = RestCounter(services, sid)
        client.start()
        try:
            wait_until(lambda: len(client.ledger.acked) >= 3, "cells are acknowledged")
            master = cluster.master_port_of(f"skg:{{{sid}}}:meta")
            struck = time.monotonic()
            cluster.kill(master)
            wait_until(lambda: cluster.master_port_of(f"skg:{{{sid}}}:meta") != master, "a replica is promoted")
            # Restarted (as Kubernetes would), the old master rejoins as a replica of the new one: until then the
            # promoted master has no replica, so --redis-wait-replicas 1 holds commits pending (none is lost).
            cluster.restart(master)
            wait_until(lambda: client.ledger.acks_after(struck) >= 3, "cells are acknowledged after the failover")
        finally:
            client.stopping.set()
            client.join(60)
        n, log = final_state(services, sid)
        assert verdict(client.ledger, n, log) == []
        print(f"\nfailover: unavailable {(client.ledger.first_ack_after(struck) or struck) - struck:.2f} s, "
              f"outcomes {dict(client.ledger.outcomes)}")  # fmt: skip
