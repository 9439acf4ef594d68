"""Several real service processes sharing one real redis-server: forwarding, takeover, fencing, outages."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.kernel_process import CONNECTION_FILE
from tests.redis_server import RedisServer, redis_server
from tests.service import Service, start_service

TOKEN = "replica-token"
SIGNING_KEY = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def redis_srv(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path / "redis") as srv:
        yield srv


def start_replica(tmp_path: Path, redis: RedisServer, name: str, *args: str) -> Service:
    env = {"SKG_REDIS_URL": redis.url, "SKG_SIGNING_KEY": SIGNING_KEY}
    return start_service(tmp_path / name, ["--pool-size", "1", "--lease-ttl", "3", *args], token=TOKEN, env=env)


@contextmanager
def replicas(tmp_path: Path, redis: RedisServer, count: int, *args: str) -> Iterator[list[Service]]:
    with ExitStack() as stack, ThreadPoolExecutor(count) as pool:
        services = list(pool.map(lambda i: start_replica(tmp_path, redis, f"r{i}", *args), range(count)))
        for svc in services:
            stack.callback(_stop, svc)
        yield services


def _stop(svc: Service) -> None:
    svc.stop(signal.SIGKILL if svc.proc.poll() is None else signal.SIGTERM, timeout=20)


def run(svc: Service, code: str, session: str | None = None, timeout: float = 60) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code}
    if session:
        body["session"] = session
    r = httpx.post(f"{svc.url}/execute", json=body, headers=svc.headers, timeout=timeout)
    assert r.status_code == 200, r.text
    reply: dict[str, Any] = r.json()
    return reply


def value(reply: dict[str, Any]) -> str:
    results = [o for o in reply["outputs"] if o["output_type"] == "execute_result"]
    assert results, reply
    text: str = results[-1]["data"]["text/plain"]
    return text


def session_view(svc: Service, session: str) -> dict[str, Any]:
    view: dict[str, Any] = httpx.get(f"{svc.url}/sessions/{session}", headers=svc.headers, timeout=30).json()
    return view


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll ``condition`` (bounded in time and count) until it holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting until {what}")


def owner_url(svc: Service, session: str) -> str | None:
    info = httpx.get(f"{svc.url}/sessions/{session}", headers=svc.headers, timeout=10).json()
    owner = info.get("owner")
    return owner["url"] if owner else None


def test_session_created_on_a_is_used_through_b(tmp_path: Path, redis_srv: RedisServer) -> None:
    with replicas(tmp_path, redis_srv, 2) as (a, b):
        sid = run(a, "x = 41\ndef f(v):\n    return v + 1")["session"]
        reply = run(b, "f(x)", sid)
        assert value(reply) == "42"
        assert reply["execution_count"] == 2
        # B forwarded to the live owner: the kernel stayed on A, nothing was restored.
        assert reply.get("restored") is None
        assert owner_url(b, sid) == a.url
        assert sid in [s["id"] for s in httpx.get(f"{b.url}/sessions", headers=b.headers).json()]
        assert sid in [k["id"] for k in httpx.get(f"{b.url}/api/kernels", headers=b.headers).json()]


def test_kill_9_owner_then_b_resumes_with_all_state(tmp_path: Path, redis_srv: RedisServer) -> None:
    with replicas(tmp_path, redis_srv, 2) as (a, b):
        sid = run(a, "import math as m\nclass P:\n    def __init__(self, v):\n        self.v = v\np = P(3)")["session"]
        run(a, "shared = [1, 2]\nalias = {'k': shared}\nsq = lambda v: v * v", sid)
        last = run(a, "total = sq(p.v) + m.floor(2.5)", sid)
        assert last["checkpoint"]["status"] == "committed"
        a.proc.kill()
        a.proc.wait(10)
        reply = run(b, "(total, alias['k'] is shared, type(p).__name__, m.pi > 3)", sid)
        assert value(reply) == "(11, True, 'P', True)"
        assert reply["restored"]["execution_count"] == last["execution_count"]
        assert reply["execution_count"] == last["execution_count"] + 1
        assert reply["restored"]["lost"] == {}
        assert owner_url(b, sid) == b.url


def test_kernel_env_follows_the_session_to_another_replica(tmp_path: Path, redis_srv: RedisServer) -> None:
    with replicas(tmp_path, redis_srv, 2) as (a, b):
        r = httpx.post(f"{a.url}/api/kernels", json={"env": {"KERNEL_USERNAME": "ada"}}, headers=a.headers)
        sid = r.json()["id"]
        run(a, "x = 1", sid)
        a.proc.kill()
        a.proc.wait(10)
        assert value(run(b, "import os\nos.environ.get('KERNEL_USERNAME')", sid)) == "'ada'"


def test_sigterm_owner_hands_sessions_over(tmp_path: Path, redis_srv: RedisServer) -> None:
    with replicas(tmp_path, redis_srv, 2) as (a, b):
        sid = run(a, "kept = 'yes'")["session"]
        assert a.stop(signal.SIGTERM) == 0
        assert owner_url(b, sid) is None  # released, not left to expire
        reply = run(b, "kept", sid)
        assert value(reply) == "'yes'"
        assert reply["restored"] is not None


def test_replicas_racing_for_one_session_never_both_run_it(tmp_path: Path, redis_srv: RedisServer) -> None:
    with replicas(tmp_path, redis_srv, 3) as (a, b, c):
        sid = run(a, "counter = 0\nimport os\nowners = set()")["session"]
        a.stop(signal.SIGTERM)  # the session is now unowned: B and C race for it
        # The kernel's connection file names it on the host (a sandboxed kernel's pid is the same in each).
        code = f"counter += 1\nowners.add({CONNECTION_FILE})\ncounter"
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda i: run((b, c)[i % 2], code, sid), range(8)))
        assert sorted(int(value(r)) for r in replies) == list(range(1, 9))
        final = run(b, "(counter, len(owners))", sid)
        assert value(final) == "(8, 1)"
        restored = [r for r in replies if r.get("restored")]
        assert len(restored) == 1


def test_paused_owner_cannot_commit_after_losing_its_lease(tmp_path: Path, redis_srv: RedisServer) -> None:
    with replicas(tmp_path, redis_srv, 2) as (a, b):
        sid = run(a, "x = 'A'")["session"]
        box: dict[str, httpx.Response] = {}

        def late_cell() -> None:
            box["r"] = httpx.post(
                f"{a.url}/execute",
                json={"session": sid, "code": "import time\ntime.sleep(5)\nx = 'A-late'"},
                headers=a.headers,
                timeout=120,
            )

        worker = threading.Thread(target=late_cell)
        worker.start()
        wait_until(lambda: session_view(a, sid).get("execution_state") == "busy", "A runs the late cell")
        os.kill(a.proc.pid, signal.SIGSTOP)
        try:
            # Only once A's lease lapsed may B take the session (the store says so, not a clock in the test).
            wait_until(lambda: session_view(b, sid).get("owner") is None, "A's lease lapses")
            reply = run(b, "x", sid)
            assert value(reply) == "'A'"
            assert reply["restored"] is not None
            run(b, "x = 'B'", sid)
        finally:
            os.kill(a.proc.pid, signal.SIGCONT)
        worker.join(60)
        late = box["r"]
        # A's cell ran, but A's lease lapsed while it was paused: A does not even try to commit it (were it
        # to, the commit would be fenced off), drops its kernel, and does not report the cell as done.
        assert late.status_code == 503, late.text
        assert late.json()["cell"] == "not saved"
        assert late.headers["retry-after"]
        assert value(run(b, "x", sid)) == "'B'"
        assert value(run(a, "x", sid)) == "'B'"  # A forwards to the new owner now
        assert owner_url(a, sid) == b.url


def test_redis_outage_keeps_owned_sessions_running_with_pending_checkpoints(tmp_path: Path) -> None:
    srv = RedisServer(tmp_path / "redis-aof", persistent=True)
    srv.start()
    try:
        with replicas(tmp_path, srv, 2) as (a, b):
            sid = run(a, "x = 1")["session"]
            srv.stop()
            reply = run(a, "x = 2\nx", sid)
            assert value(reply) == "2"
            assert reply["checkpoint"]["status"] == "pending"
            refused = httpx.post(f"{a.url}/sessions", headers=a.headers, timeout=30)
            assert refused.status_code == 503
            assert "unreachable" in refused.json()["message"]
            ready = httpx.get(f"{a.url}/readyz", timeout=10)
            assert ready.status_code == 503
            assert ready.json()["store"].startswith("unreachable")
            srv.start()
            wait_until(lambda: session_view(a, sid)["checkpoint"]["status"] == "committed", "the commit lands")
            a.proc.kill()
            a.proc.wait(10)
            assert value(run(b, "x", sid)) == "2"
    finally:
        srv.stop()


def test_deleting_a_session_anywhere_removes_it_everywhere(tmp_path: Path, redis_srv: RedisServer) -> None:
    with replicas(tmp_path, redis_srv, 2) as (a, b):
        sid = run(a, "y = 1")["session"]
        assert httpx.delete(f"{b.url}/sessions/{sid}", headers=b.headers).status_code == 204
        assert httpx.get(f"{a.url}/sessions/{sid}", headers=a.headers).status_code == 404
        r = httpx.post(f"{a.url}/execute", json={"code": "y", "session": sid}, headers=a.headers)
        assert r.status_code == 404
        assert redis_srv.client().keys(f"*{sid}*") == []
