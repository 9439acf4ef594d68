"""The service's side of the kernel zygote (``zygote.py``): starting it, asking it for kernels, and a
jupyter_client provisioner whose process is a forked kernel, so that the manager polls, signals, kills and
waits it as it would a kernel it launched itself (connection file, IPC sockets and shutdown stay
jupyter_client's own)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning.local_provisioner import LocalProvisioner

log = logging.getLogger(__name__)

_LINE_LIMIT = 1 << 20
_CLOSE_TIMEOUT = 10.0


class ZygoteGone(RuntimeError):
    """The zygote is not running (never started, or exited): kernels are exec'd instead."""


class ForkFailed(ZygoteGone):
    """The zygote could not fork this kernel (or the fork could not make its namespaces): it is exec'd."""


class ForkedProcess:
    """A forked kernel, as much of ``subprocess.Popen`` as jupyter_client's LocalProvisioner uses.

    It is the zygote's grandchild, not the service's child: its exit status comes from the zygote, and
    signals go through a pidfd so that a recycled pid is never signalled."""

    stdin = stdout = stderr = None

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except OSError:  # already gone: its exit is on its way from the zygote
            self._pidfd = None
        self._exited = asyncio.Event()

    def exited(self, status: int) -> None:
        if self.returncode is None:
            self.returncode = status
            self._exited.set()
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        return self.returncode

    async def wait_async(self) -> int | None:
        await self._exited.wait()
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is not None or self._pidfd is None:
            return
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self._pidfd, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


class ZygoteClient:
    """One zygote process per replica, started once and early; forks kernels on request."""

    def __init__(self, proc: asyncio.subprocess.Process, ready: dict[str, Any]) -> None:
        self.proc = proc
        self.ready = ready
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._kernels: dict[int, ForkedProcess] = {}
        self._early_exits: dict[int, int] = {}
        # Requests whose waiter went away (cancelled, timed out) before the zygote answered: the zygote forks their
        # kernel all the same, and nobody else would ever shut it down (it would live as long as the zygote).
        self._abandoned: set[int] = set()
        self._lock = asyncio.Lock()
        self._closing = False
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def start(
        cls, prefix: Sequence[str], env: Mapping[str, str], config: Mapping[str, Any], timeout: float
    ) -> ZygoteClient:
        argv = [*prefix, sys.executable, "-m", "kernel_gateway.kernels.zygote", json.dumps(dict(config))]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=dict(env),
            limit=_LINE_LIMIT,
        )  # fmt: skip
        assert proc.stdout is not None
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for returns a line that arrives in the turn of a
            # cancel (the factory closing) and loses the cancel; this zygote would then outlive the factory.
            async with asyncio.timeout(timeout):
                line = await proc.stdout.readline()
            ready: dict[str, Any] = json.loads(line) if line else {}
            if not ready.get("ready"):
                raise ZygoteGone(f"the kernel zygote did not start (exit {await proc.wait()})")
        except BaseException:
            _end(proc)
            await proc.wait()
            raise
        return cls(proc, ready)

    @property
    def stopped(self) -> bool:
        """Stopped by the service (closed, or given up after failed forks), not died."""
        return self._closing

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None and not self._reader.done()

    async def fork(self, argv: Sequence[str], env: Mapping[str, str], cwd: str | None, kernel_dir: Path,
                   timeout: float, capture: Mapping[str, Any] | None = None) -> ForkedProcess:  # fmt: skip
        """A kernel forked and sealed in its sandbox; with ``capture`` (``{"auto_dir", "reply"}``) it has
        installed the capture module before serving (``zygote.py``)."""
        if not self.alive:
            raise ZygoteGone("the kernel zygote has exited")
        rid = next(self._ids)
        request = {"id": rid, "argv": list(argv), "env": dict(env), "cwd": cwd, "kernel_dir": str(kernel_dir),
                   "capture": dict(capture) if capture is not None else None}  # fmt: skip
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        sent = False
        try:
            assert self.proc.stdin is not None
            async with self._lock:
                self.proc.stdin.write(json.dumps(request).encode() + b"\n")
                sent = True
                await self.proc.stdin.drain()
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns a reply that arrives in the turn of a
            # cancel and loses the cancel; here the cancel is raised and the kernel of that reply shut down.
            async with asyncio.timeout(timeout):
                reply = await fut
        except (ConnectionError, BrokenPipeError) as exc:
            raise ZygoteGone(f"the kernel zygote has exited: {exc}") from exc
        except BaseException:
            if sent:
                self._abandon(rid, fut)
            raise
        finally:
            self._waiting.pop(rid, None)
        if "error" in reply:
            raise ForkFailed(str(reply["error"]))
        return self._adopt(int(reply["pid"]))

    def _adopt(self, pid: int) -> ForkedProcess:
        process = ForkedProcess(pid)
        status = self._early_exits.pop(pid, None)
        if status is not None:
            process.exited(status)
        else:
            self._kernels[pid] = process
        return process

    def _abandon(self, rid: int, fut: asyncio.Future[dict[str, Any]]) -> None:
        """The waiter of request ``rid`` is gone: its kernel is killed now if its answer is already in, else when
        it comes (``_answer``); a zygote that died took it along."""
        if not fut.done() or fut.cancelled():
            if not self._reader.done():
                self._abandoned.add(rid)
        elif fut.exception() is None:
            self._discard(fut.result())

    def _discard(self, reply: dict[str, Any]) -> None:
        if "pid" not in reply:
            return  # the fork failed: nothing runs
        process = self._adopt(int(reply["pid"]))
        log.warning("kernel zygote: kernel %d was forked for a start that went away: killed", process.pid)
        process.kill()  # its exit comes from the zygote as any kernel's, and takes it off ``_kernels``

    def _answer(self, msg: dict[str, Any]) -> None:
        """The zygote's answer to fork request ``msg["id"]``."""
        rid = int(msg["id"])
        if rid in self._abandoned:
            self._abandoned.discard(rid)
            self._discard(msg)
            return
        fut = self._waiting.get(rid)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            while line := await self.proc.stdout.readline():
                msg = json.loads(line)
                if "exit" in msg:
                    process = self._kernels.pop(int(msg["exit"]), None)
                    if process is not None:
                        process.exited(int(msg["status"]))
                    else:  # its fork reply is still on its way
                        self._early_exits[int(msg["exit"])] = int(msg["status"])
                elif msg.get("id") is not None:
                    self._answer(msg)
        except (ValueError, OSError) as exc:
            log.error("kernel zygote: unreadable answer: %s", exc)
        finally:
            # Without the zygote its kernels are dead (parent-death signal): say so to whoever waits.
            for process in self._kernels.values():
                process.exited(-signal.SIGKILL)
            self._kernels.clear()
            self._abandoned.clear()
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(ZygoteGone("the kernel zygote has exited"))
            if not self._closing:
                status = self.proc.returncode
                log.error("kernel zygote exited (%s), its kernels with it", status)

    def kill(self) -> None:
        """Stop the zygote at once; its kernels die with it (parent-death signal)."""
        self._closing = True
        _end(self.proc)

    async def close(self) -> None:
        """Stop the zygote and wait until its pipes are closed. Left to the garbage collector, a subprocess
        transport closes them through its event loop, which may be closed by then: an unraisable error (under
        pytest, one whose report re-entered an AST build and failed an unrelated test on Python 3.11)."""
        self.kill()
        await self.proc.wait()
        # Its stdout ends once the zygote is gone (its kernels die with it): the reader sees the end, and the
        # transport closes itself with its last pipe.
        await asyncio.wait({self._reader}, timeout=_CLOSE_TIMEOUT)
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


def _end(proc: asyncio.subprocess.Process) -> None:
    """Kill the zygote and close our end of its stdin (the transport closes once every pipe and the process
    have ended)."""
    if proc.stdin is not None:
        proc.stdin.close()
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


class ForkProvisioner(LocalProvisioner):
    """LocalProvisioner whose kernel is forked from the zygote instead of exec'd."""

    zygote: ZygoteClient | None = None
    kernel_dir: Path | None = None
    fork_timeout: float = 60.0
    capture: Mapping[str, Any] | None = None  # the kernel installs the capture module itself (``ZygoteClient.fork``)

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        assert self.zygote is not None and self.kernel_dir is not None
        argv = cmd[cmd.index("ipykernel_launcher") + 1 :] if "ipykernel_launcher" in cmd else cmd[1:]
        env = kwargs.get("env") or {}
        cwd = kwargs.get("cwd")
        process = await self.zygote.fork(
            argv, env, str(cwd) if cwd else None, self.kernel_dir, self.fork_timeout, self.capture
        )
        self.process = process  # type: ignore[assignment]  # as much of Popen as LocalProvisioner uses
        self.pid = process.pid
        self.pgid = None  # signals go to the kernel alone, through its pidfd
        self.cwd = cwd or "/tmp"
        return self.connection_info

    async def wait(self) -> int | None:
        process = self.process
        if isinstance(process, ForkedProcess):
            status = await process.wait_async()
            self.process = None
            return status
        return await super().wait()
