"""Process lifecycle: SIGTERM drains, the pool refills, idle WebSockets are let go (idle sessions: see
test_notebook_state, they are evicted to the store)."""

from __future__ import annotations

import ast
import asyncio
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.jupyter_ws import run_cell
from tests.kernel_process import CONNECTION_FILE, host_pid, kernel_dir
from tests.service import running_service, start_service
from tests.waiting import wait_for


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes; its parent (the service) has exited.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_sigterm_lets_running_cell_finish_then_exits_cleanly(tmp_path: Path) -> None:
    service = start_service(tmp_path, ["--pool-size", "2", "--shutdown-grace", "20"])
    try:
        with service.client() as c:
            sid = c.post("/execute", json={"code": CONNECTION_FILE}).json()
            connection_file = ast.literal_eval(sid["outputs"][0]["data"]["text/plain"])
            kernel_pid = host_pid(connection_file)
            box: dict[str, httpx.Response] = {}

            # In the kernel's own directory: a sandboxed kernel sees that one at the same path (not tmp_path).
            release = kernel_dir(connection_file) / "release"

            def slow() -> None:
                # The cell runs until the test has checked the drain, then ends: no clock decides the order.
                code = (
                    "import os, time\n"
                    f"for _ in range(1200):\n    if os.path.exists({str(release)!r}): break\n    time.sleep(0.05)\n"
                    "'finished'"
                )
                box["r"] = c.post("/execute", json={"code": code, "session": sid["session"]})

            worker = threading.Thread(target=slow)
            worker.start()
            wait_for(lambda: c.get(f"/sessions/{sid['session']}").json()["execution_state"] == "busy")
            service.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: httpx.get(service.url + "/readyz").status_code == 503)
            # Draining: still listening, but not ready, and no new work.
            for path, body in (("/execute", {"code": "1"}), ("/sessions", {}), ("/api/kernels", {})):
                refused = httpx.post(service.url + path, json=body)
                assert refused.status_code == 503
                assert "shutting down" in refused.json()["message"]
            release.touch()
            worker.join(60)
        assert box["r"].status_code == 200
        assert box["r"].json()["outputs"][0]["data"] == {"text/plain": "'finished'"}
        assert service.wait_exit(30) == 0
        deadline = time.monotonic() + 10
        while _alive(kernel_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(kernel_pid)
    finally:
        service.stop(signal.SIGKILL)


def test_pool_refills_after_a_session_takes_a_kernel(tmp_path: Path) -> None:
    with running_service(tmp_path, ["--pool-size", "1"]) as service, service.client() as c:
        assert c.get("/readyz").json()["pool_ready"] == 1
        c.post("/sessions")
        deadline = time.monotonic() + 60
        ready = 0
        while time.monotonic() < deadline:
            ready = c.get("/readyz").json()["pool_ready"]
            if ready == 1:
                break
            time.sleep(0.2)
        assert ready == 1


@pytest.mark.asyncio
async def test_idle_websocket_is_closed(tmp_path: Path) -> None:
    args = ["--pool-size", "1", "--ws-idle-timeout", "1.5"]
    with running_service(tmp_path, args) as service:
        kid = httpx.post(service.url + "/api/kernels").json()["id"]
        async with connect(f"{service.ws_url}/api/kernels/{kid}/channels") as ws:
            await run_cell(ws, "1")
            with pytest.raises(ConnectionClosed) as info:
                for _ in range(100):
                    await asyncio.wait_for(ws.recv(), 30)
            assert info.value.rcvd is not None
            assert (info.value.rcvd.code, info.value.rcvd.reason) == (1001, "idle")
        # The session outlives its WebSocket: a reconnecting client finds it.
        assert httpx.get(f"{service.url}/api/kernels/{kid}").status_code == 200


def test_a_kernel_start_cancelled_after_its_launch_leaves_no_kernel_behind(tmp_path: Path) -> None:
    # An exec'd kernel is launched, then sent the capture module: a start cancelled there (the pool's close on
    # SIGTERM) shuts the launched kernel down instead of leaving it running with its sockets open.
    from kernel_gateway.kernels.kernel import Kernel, KernelState
    from kernel_gateway.replica import open_replica
    from kernel_gateway.settings import Settings

    settings = Settings(data_dir=tmp_path, pool_size=0, kernel_launch="exec", preload_modules=[])

    async def scenario() -> tuple[KernelState, int | None]:
        manager = open_replica(settings, lambda: "http://127.0.0.1:1").manager
        factory = manager.kernels
        held: list[Kernel] = []
        installing = asyncio.Event()

        async def install(kernel: Kernel, timeout: float) -> None:
            held.append(kernel)
            installing.set()
            await asyncio.Event().wait()  # held until the start is cancelled

        factory.checkpointer.install = install  # type: ignore[method-assign,assignment]
        try:
            start = asyncio.get_running_loop().create_task(factory.start(settings.kernel_name, None))
            await asyncio.wait_for(installing.wait(), 120)
            (kernel,) = held
            process = kernel.km.provisioner.process  # type: ignore[union-attr]
            start.cancel()
            await asyncio.gather(start, return_exceptions=True)
            return kernel.state, process.poll() if process is not None else None
        finally:
            await manager.close()

    state, exit_status = asyncio.run(scenario())
    assert state is KernelState.SHUT_DOWN
    assert exit_status is not None  # the process was stopped and reaped, not left running
