"""Leases, fencing and the inter-replica credential, on real replicas sharing a real Redis.

- a forwarded request is one with a valid inter-replica claim: a client cannot forge one, and a claim for
  another replica identity (a restart in place) is answered 421 naming the replica that is there;
- a checkpoint that fails is never answered as a plain success, and cells that ran but were never saved
  are named to the next caller after their replica died;
- a session without checkpoints keeps its lease like any other, and its loss is said, not silent.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.sync.client import connect

from kernel_gateway.peers import PEER_HEADER, REPLICA_HEADER, PeerAuth
from tests.fault_rig import signal_tree
from tests.redis_server import RedisServer, free_port, redis_server
from tests.service import Service, start_service

TOKEN = "lease-token"
SIGNING_KEY = "0123456789abcdef0123456789abcdef"
BREAK_CHECKPOINTS = "get_ipython()._notebook_state_tracker.checkpoint = lambda *a, **k: 1 / 0"


@pytest.fixture(scope="module")
def redis_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as srv:
        yield srv


@contextmanager
def two_replicas(tmp_path: Path, redis: RedisServer, *args: str) -> Iterator[tuple[Service, Service]]:
    env = {"SKG_REDIS_URL": redis.url, "SKG_SIGNING_KEY": SIGNING_KEY}
    with ExitStack() as stack:
        services = []
        for name in ("a", "b"):
            svc = start_service(tmp_path / name, ["--pool-size", "1", "--lease-ttl", "3", *args], token=TOKEN, env=env)
            stack.callback(lambda s=svc: _kill(s))  # type: ignore[misc]
            services.append(svc)
        yield services[0], services[1]


def _kill(svc: Service) -> None:
    if svc.proc.poll() is None:
        signal_tree(svc.proc.pid, signal.SIGKILL)
        svc.proc.wait(10)


def execute(
    svc: Service, code: str, session: str | None = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    body: dict[str, Any] = {"code": code, **({"session": session} if session else {})}
    return httpx.post(f"{svc.url}/execute", json=body, headers=svc.headers if headers is None else headers, timeout=60)


def ok(svc: Service, code: str, session: str | None = None) -> dict[str, Any]:
    r = execute(svc, code, session)
    assert r.status_code == 200, r.text
    reply: dict[str, Any] = r.json()
    return reply


def owner(svc: Service, session: str) -> dict[str, Any]:
    info: dict[str, Any] = httpx.get(f"{svc.url}/sessions/{session}", headers=svc.headers, timeout=30).json()
    return info["owner"] or {}


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting until {what}")


def test_a_forwarded_request_is_one_with_a_valid_claim_and_nothing_a_client_sends(
    tmp_path: Path, redis_srv: RedisServer
) -> None:
    with two_replicas(tmp_path, redis_srv) as (a, b):
        sid = ok(a, "x = 1")["session"]
        a_id = owner(b, sid)["replica"]
        # Headers a client may send do not make its request a forwarded one (no 421, no take-over from A).
        for forged in ({"x-skg-forwarded": "a"}, {PEER_HEADER: "v1.e30.00"}):
            r = execute(b, "x", sid, {**b.headers, **forged})
            assert r.status_code == 200, r.text
        assert owner(b, sid)["replica"] == a_id
        # A claim instead of a token: a replica's credential works where a user's token is missing...
        peer = PeerAuth.from_signing_key(bytes.fromhex(SIGNING_KEY), "some-replica")
        r = execute(a, "x", sid, peer.headers("POST", "/execute", None, to=a_id))
        assert r.status_code == 200, r.text
        # ...but only once, only for the request it was made for, and never without one.
        once = peer.headers("POST", "/execute", None, to=a_id)
        assert execute(a, "x", sid, once).status_code == 200
        assert execute(a, "x", sid, once).status_code == 401
        assert execute(a, "x", sid, peer.headers("POST", "/sessions", None, to=a_id)).status_code == 401
        # A forwarded request that reaches a non-owner is refused, REST and WebSocket alike.
        b_id = httpx.get(f"{b.url}/healthz").headers[REPLICA_HEADER]
        r = execute(b, "x", sid, peer.headers("POST", "/execute", None, to=b_id))
        assert r.status_code == 421, r.text
        path = f"/api/kernels/{sid}/channels"
        with (
            pytest.raises(websockets.InvalidStatus) as refused,
            connect(f"{b.ws_url}{path}", additional_headers=peer.headers("GET", path, None, to=b_id)),
        ):
            pass
        assert refused.value.response.status_code == 421
        # A claim for another identity (the replica that was here before a restart) names who is here.
        r = execute(b, "x", sid, peer.headers("POST", "/execute", None, to=a_id))
        assert r.status_code == 421 and r.headers[REPLICA_HEADER] == b_id
        assert owner(b, sid)["replica"] == a_id


def test_failed_checkpoints_are_errors_and_unsaved_cells_are_named_after_a_crash(
    tmp_path: Path, redis_srv: RedisServer
) -> None:
    with two_replicas(tmp_path, redis_srv) as (a, b):
        sid = ok(a, "x = 1")["session"]
        for code in (BREAK_CHECKPOINTS, "y = 2"):
            reply = ok(a, code, sid)
            assert reply["status"] == "error", reply
            assert reply["error"]["ename"] == "CheckpointFailed"
            assert "execution count 1" in reply["error"]["evalue"]
            assert "ZeroDivisionError" in reply["error"]["evalue"]  # what the kernel said went wrong
            assert reply["checkpoint"]["status"] == "failed"
        # The renewals record what ran (cells 2 and 3), though only cell 1 committed.
        client = redis_srv.client()
        wait_until(lambda: int(client.hget(f"skg:{{{sid}}}:meta", "ran") or 0) >= 3, "a renewal records cell 3")
        _kill(a)
        reply = ok(b, "x", sid)
        assert reply["restored"]["execution_count"] == 1
        assert any("cells 2-3 ran on a replica that stopped" in n for n in reply["notices"]), reply["notices"]
        assert ok(b, "'y' in globals()", sid)["notices"] == []  # said once


def test_a_session_without_checkpoints_keeps_its_lease_and_its_loss_is_said(
    tmp_path: Path, redis_srv: RedisServer
) -> None:
    with two_replicas(tmp_path, redis_srv, "--no-checkpoint") as (a, b):
        sid = ok(a, "x = 5")["session"]
        first = owner(b, sid)
        seen = [first["expires_in"]]

        def renewed_twice() -> bool:
            current = owner(b, sid)
            assert current["replica"] == first["replica"] and current["epoch"] == first["epoch"]
            if current["expires_in"] > seen[-1]:
                seen.append(current["expires_in"])
            seen[-1] = min(seen[-1], current["expires_in"])
            return len(seen) >= 3

        wait_until(renewed_twice, "the lease is renewed, twice")
        reply = ok(b, "x", sid)  # forwarded to the live owner: the kernel and its x are still there
        assert reply["outputs"][0]["data"]["text/plain"] == "5"
        _kill(a)
        lost = execute(b, "x", sid).json()
        assert lost["status"] == "error" and lost["error"]["ename"] == "NameError"
        assert any("variables were lost" in n for n in lost["notices"]), lost


def test_a_replica_restarted_in_place_serves_its_predecessors_sessions_at_once(
    tmp_path: Path, redis_srv: RedisServer
) -> None:
    """Kubernetes restarts a crashed container in its pod, at the same address: the new process proves its
    predecessor gone (another identity answers there) and takes its sessions over, no 421 for a lease TTL."""
    env = {"SKG_REDIS_URL": redis_srv.url, "SKG_SIGNING_KEY": SIGNING_KEY}
    args = ["--port", str(free_port()), "--pool-size", "1", "--lease-ttl", "30"]
    first = start_service(tmp_path / "first", args, token=TOKEN, env=env)
    try:
        sid = ok(first, "x = 7")["session"]
        before = owner(first, sid)
    finally:
        _kill(first)
    second = start_service(tmp_path / "second", args, token=TOKEN, env=env)
    try:
        assert owner(second, sid)["replica"] == before["replica"]  # the old lease has most of its 30 s left
        reply = ok(second, "x", sid)
        assert reply["outputs"][0]["data"]["text/plain"] == "7"
        assert reply["restored"]["execution_count"] == 1
        after = owner(second, sid)
        assert after["url"] == before["url"] and after["replica"] != before["replica"]
        assert after["epoch"] > before["epoch"]
    finally:
        _kill(second)


def test_shutdown_names_the_sessions_it_could_not_save(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    env = {"SKG_REDIS_URL": redis.url, "SKG_SIGNING_KEY": SIGNING_KEY}
    svc = start_service(tmp_path / "a", ["--pool-size", "1", "--lease-ttl", "30"], token=TOKEN, env=env)
    try:
        sid = ok(svc, "x = 1")["session"]
        redis.stop()
        reply = ok(svc, "x = 2", sid)
        assert reply["checkpoint"]["status"] == "pending"
        assert svc.stop(signal.SIGTERM) == 0
        said = "".join(svc.log)
        assert "could not be saved" in said and sid in said, said[-2000:]
    finally:
        _kill(svc)
        redis.stop()
