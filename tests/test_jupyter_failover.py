"""End to end failover: a real ``jupyter server --gateway-url=<balancer>`` keeps its notebook when a replica dies.

Two replicas share one throwaway redis-server behind a non-sticky round-robin balancer. A frontend drives
jupyter server's own REST and kernel WebSocket API; the replica that owns the session is killed with SIGKILL,
and the SAME frontend WebSocket carries on: jupyter server's GatewayWebSocketConnection reconnects to the
balancer by itself, which now only reaches the survivor, and the survivor restores the session from its last
committed checkpoint.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.balancer import RoundRobinBalancer, balancer
from tests.jupyter_app import JupyterServer, start_jupyter, stop_group
from tests.jupyter_ws import Msg, message
from tests.redis_server import redis_server
from tests.service import Service
from tests.test_jupyter_server_gateway import Frontend, frontend, result_text
from tests.test_replicas import TOKEN, owner_url, replicas

JUPYTER_TOKEN = "jupyter-failover-token"
STARTUP_TIMEOUT = 30.0
CELL_TIMEOUT = 20.0
RECOVERY_TIMEOUT = 40.0
OUTPUT = Path(__file__).resolve().parent.parent / "test-output" / "test_jupyter_failover"

pytestmark = pytest.mark.timeout(120)


# --------------------------------------------------------------------------------------------------------------
# Processes: jupyter server on the balancer, and cleanup that also reaps the replicas' kernels
# --------------------------------------------------------------------------------------------------------------


def _start_jupyter_server(tmp: Path, gateway_url: str) -> JupyterServer:
    return start_jupyter(
        tmp,
        gateway_url=gateway_url,
        gateway_token=TOKEN,
        token=JUPYTER_TOKEN,
        startup_timeout=STARTUP_TIMEOUT,
        args=[
            "--GatewayClient.request_timeout=30",
            # Reconnect the kernel WebSocket to the gateway quickly after the owner replica dies.
            "--GatewayClient.gateway_retry_interval=0.5",
            "--GatewayClient.gateway_retry_interval_max=2",
            "--GatewayClient.gateway_retry_max=10",
        ],
    )


@contextlib.contextmanager
def cluster(tmp_path: Path, output: Path) -> Iterator[tuple[list[Service], RoundRobinBalancer, JupyterServer]]:
    """Redis, two replicas, a round-robin balancer in front of them, and jupyter server on the balancer.

    Every process's log is kept in ``output`` (replica-<port>.log, jupyter-server.log) for whoever reads a failure.
    """
    shutil.rmtree(output, ignore_errors=True)
    output.mkdir(parents=True)

    def save(name: str, text: str) -> None:
        (output / f"{name}.log").write_text(text)

    with ExitStack() as stack:
        redis = stack.enter_context(redis_server(tmp_path / "redis"))
        services = stack.enter_context(replicas(tmp_path, redis, 2))
        for svc in services:
            stack.callback(lambda s=svc: save(f"replica-{urlsplit(s.url).port}", "".join(s.log)))  # type: ignore[misc]
            stack.callback(stop_group, svc.proc)
        lb = stack.enter_context(balancer([("127.0.0.1", urlsplit(s.url).port or 0) for s in services]))
        jupyter = _start_jupyter_server(tmp_path / "jupyter", lb.url)
        stack.callback(lambda: save("jupyter-server", jupyter.log()))
        stack.callback(stop_group, jupyter.proc)
        yield services, lb, jupyter


# --------------------------------------------------------------------------------------------------------------
# A frontend that keeps every message it receives
# --------------------------------------------------------------------------------------------------------------


class RecordingFrontend(Frontend):
    def __init__(self, inner: Frontend) -> None:
        super().__init__(inner.ws)
        self.seen: list[Msg] = []

    async def recv(self, timeout: float = CELL_TIMEOUT) -> Msg:
        msg = await super().recv(timeout)
        self.seen.append(msg)
        return msg

    async def wait_for_kernel(self, timeout: float) -> Msg:
        """Send kernel_info_request every half second until one is answered (requests sent while jupyter server's
        gateway connection is down are dropped by it)."""
        deadline = time.monotonic() + timeout
        asked: set[str] = set()
        while time.monotonic() < deadline:
            request = message("kernel_info_request", {})
            asked.add(request["header"]["msg_id"])
            await self.send(request)
            resend_at = min(time.monotonic() + 0.5, deadline)
            while (left := resend_at - time.monotonic()) > 0:
                try:
                    msg = await self.recv(left)
                except TimeoutError:
                    break
                if msg["channel"] == "shell" and msg["parent_header"].get("msg_id") in asked:
                    return msg
        raise TimeoutError(f"no kernel_info_reply through jupyter server within {timeout} s")


def _committed(svc: Service, sid: str, count: int, timeout: float = 10.0) -> None:
    """Wait until the owner reports the checkpoint of cell ``count`` committed to the store."""
    deadline = time.monotonic() + timeout
    info: dict[str, object] = {}
    while time.monotonic() < deadline:
        info = httpx.get(f"{svc.url}/sessions/{sid}", headers=svc.headers, timeout=10).json()
        checkpoint = info.get("checkpoint")
        if (
            isinstance(checkpoint, dict)
            and checkpoint.get("status") == "committed"
            and checkpoint.get("execution_count") == count
        ):
            return
        time.sleep(0.1)
    raise AssertionError(f"checkpoint of cell {count} not committed: {info}")


# --------------------------------------------------------------------------------------------------------------
# The test
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ws_path", ["relayed", "direct"])
async def test_jupyter_server_websocket_survives_kill_9_of_the_owner_replica(tmp_path: Path, ws_path: str) -> None:
    """``relayed``: jupyter server's gateway WebSocket lands on the survivor, which relays it to the owner;
    ``direct``: it lands on the owner itself. Either way the owner is then killed."""
    started = time.monotonic()
    with cluster(tmp_path, OUTPUT / ws_path) as ((a, b), lb, jupyter):
        async with jupyter.client() as c:
            r = await c.post(
                "/api/sessions",
                json={
                    "path": "failover.ipynb",
                    "name": "failover.ipynb",
                    "type": "notebook",
                    "kernel": {"name": "python3"},
                },
            )
            assert r.status_code == 201, f"{r.status_code} {r.text}\n{jupyter.log()}"
            kid = r.json()["kernel"]["id"]
        owner = owner_url(a, kid)
        assert owner is not None and owner == owner_url(b, kid), "both replicas see the same live owner"
        victim, survivor = (a, b) if owner == a.url else (b, a)
        # Steer jupyter server's gateway WebSocket (the balancer's next connection) to the chosen replica.
        target = victim if ws_path == "direct" else survivor
        lb._next = (a, b).index(target)
        picked = len(lb.picks)

        async with frontend(jupyter, kid, session_id=uuid.uuid4().hex) as plain:
            fe = RecordingFrontend(plain)
            for code in ("x = 41", "def f(v):\n    return v + 1", "import math"):
                cell = await fe.run_cell(code, timeout=CELL_TIMEOUT)
                assert cell.reply["content"]["status"] == "ok", cell.reply["content"]
            last_count = cell.reply["content"]["execution_count"]
            # jupyter server opened exactly one gateway connection for our WebSocket, to the chosen replica.
            assert lb.picks[picked:] == [(a, b).index(target)], (lb.picks, picked)
            assert owner_url(survivor, kid) == victim.url
            _committed(victim, kid, last_count)

            # The owner dies without a word: no lease release, no WebSocket close frame.
            victim.proc.send_signal(signal.SIGKILL)
            victim.proc.wait(10)
            killed_at = time.monotonic()

            before = len(fe.seen)
            info = await fe.wait_for_kernel(RECOVERY_TIMEOUT)
            recovered_in = time.monotonic() - killed_at
            assert info["header"]["msg_type"] == "kernel_info_reply"
            assert info["content"]["status"] == "ok"

            after = await fe.run_cell("f(x), math.pi > 3", timeout=CELL_TIMEOUT)
            assert after.reply["content"]["status"] == "ok", after.reply["content"]
            assert result_text(after) == "(42, True)"
            # The kernel resumed from the last committed cell: the count goes on, it does not restart at 1.
            assert after.reply["content"]["execution_count"] == last_count + 1

            # The survivor told the frontend the kernel came back from a checkpoint.
            restored = [
                m["content"]["restored"]
                for m in fe.seen[before:]
                if m["header"]["msg_type"] == "status" and "restored" in m["content"]
            ]
            assert restored, f"no restored status among {[m['header']['msg_type'] for m in fe.seen[before:]]}"
            assert restored[0]["execution_count"] == last_count
            assert restored[0]["lost"] == {}
            assert {"x", "f"} <= set(restored[0]["restored"]), restored[0]
            assert "math" in restored[0]["modules"], restored[0]

        # The survivor owns the session now (asked directly, not through the balancer).
        assert owner_url(survivor, kid) == survivor.url
        # Reported, not asserted: timings belong to the benchmarks (loadtests/), not to a shared CI machine.
        print(f"recovered {recovered_in:.2f} s after SIGKILL; test took {time.monotonic() - started:.2f} s")
