"""The floor: a kernel of this machine's python3 kernelspec reached by jupyter_client alone, no HTTP between."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from pathlib import Path
from typing import Any

from jupyter_client.manager import AsyncKernelManager

from loadtests.common import HOST, BenchError

from .config import CODE, REQUEST_TIMEOUT, STARTUP_TIMEOUT


class RawKernel:
    """AsyncKernelManager + AsyncKernelClient over IPC (the service's transport) or TCP (jupyter_client's
    default)."""

    def __init__(self, transport: str, workdir: Path, env: dict[str, str]) -> None:
        self.env = {**os.environ, **env}
        stem = workdir / f"raw-{transport}-{uuid.uuid4().hex[:8]}"
        self.transport = transport
        self.stopped = False
        if transport == "ipc":
            self.km = AsyncKernelManager(
                kernel_name="python3", transport="ipc", ip=str(stem), connection_file=f"{stem}.json"
            )
        else:
            self.km = AsyncKernelManager(kernel_name="python3", ip=HOST, connection_file=f"{stem}.json")
        self.kc: Any = None

    async def start(self) -> None:
        await asyncio.wait_for(self.km.start_kernel(env=self.env), STARTUP_TIMEOUT)
        self.kc = self.km.client()
        self.kc.start_channels(hb=False)
        await self.kc.wait_for_ready(timeout=STARTUP_TIMEOUT)

    async def execute(self) -> float:
        """Send ``1+1``; done when its execute_reply and its iopub ``status: idle`` have both arrived."""
        kc = self.kc
        started = time.perf_counter()
        msg_id = kc.execute(CODE, store_history=True, allow_stdin=False)
        while True:
            reply = await kc.get_shell_msg(timeout=REQUEST_TIMEOUT)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        while True:
            msg = await kc.get_iopub_msg(timeout=REQUEST_TIMEOUT)
            if (
                msg["parent_header"].get("msg_id") == msg_id
                and msg["msg_type"] == "status"
                and msg["content"].get("execution_state") == "idle"
            ):
                break
        elapsed = time.perf_counter() - started
        if reply["content"].get("status") != "ok":
            raise BenchError(f"raw execute failed: {reply['content']}")
        return elapsed

    @property
    def pid(self) -> int:
        process = getattr(self.km.provisioner, "process", None)
        pid: int | None = getattr(process, "pid", None)
        if pid is None:
            raise BenchError("raw kernel: no process id (not started?)")
        return pid

    async def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        if self.kc is not None:
            self.kc.stop_channels()
        with contextlib.suppress(Exception):
            await self.km.shutdown_kernel(now=True)  # also removes the connection file and IPC sockets
