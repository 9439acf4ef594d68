"""The kernel zygote: one process per replica that imports what every kernel needs (ipykernel, IPython, the
capture module, the preload modules) once, then forks each new kernel from itself, so that those pages are
shared copy-on-write and a kernel is ready in a fraction of a cold start.

``python -m kernel_gateway.kernels.zygote CONFIG`` (CONFIG: JSON, paths and sizes only) runs inside the
zygote's sandbox. It reads fork requests as JSON lines on stdin and answers on stdout:

- ``{"id": n, "argv": [...], "env": {...}, "cwd": dir, "kernel_dir": dir, "capture": {"auto_dir": dir,
  "reply": bool} | null}`` -> ``{"id": n, "pid": p}`` (the kernel's pid as the service sees it) or
  ``{"id": n, "error": why}``; with ``capture``, the kernel installs the capture module itself before it serves;
- when a kernel exits: ``{"exit": p, "status": s}`` (``s`` as ``Popen.returncode``: negative for a signal).

Fork safety: the zygote starts no thread and opens no socket (no zmq context; the IPython shell it builds for
the kernels, ``forkapp.prebuild_shell``, only with IPython's history off, which would start a thread); gc is
frozen before the first fork so that collections do not write to the shared pages. numpy's OpenBLAS starts a
worker thread at import, but its pthread_atfork handler stops it before every fork (a kernel starts its own
on its first BLAS call), so the zygote is single-threaded whenever it forks. It reaps its children.
A kernel dies with the zygote (parent-death signal), and the zygote with the service (stdin closes; bubblewrap's
--die-with-parent).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import select
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, NoReturn

from . import isolate
from .forkapp import become_kernel, prebuild_app, prebuild_shell

_HANDSHAKE_TIMEOUT = 10.0
PRELOADED = (
    "ipykernel.kernelapp", "ipykernel.ipkernel", "ipykernel.zmqshell", "ipykernel.iostream", "ipykernel.comm",
    "IPython", "IPython.core.interactiveshell", "IPython.core.completer", "jupyter_client.session",
    "zmq", "zmq.eventloop.zmqstream", "tornado.ioloop", "notebook_state.capture", "kernel_gateway.kernels.memory_guard",
    # ipykernel's debugger (debugpy, pydevd: ~120 modules) is imported by every kernel at start
    "ipykernel.debugger", "debugpy.server.api", "pydevd", "IPython.core.debugger", "pdb", "xmlrpc.client",
    "http.server", "pydoc", "faulthandler", "runpy",
    # and by IPKernelApp.initialize itself
    "IPython.core.completerlib", "IPython.core.oinspect", "IPython.extensions.storemagic", "IPython.utils.wildcard",
    "tornado.platform.asyncio",
)  # fmt: skip
"""Imported by every kernel: preloaded whatever the settings say."""


class Zygote:
    def __init__(self, config: dict[str, Any]) -> None:
        self.isolate: bool = config["isolate"]
        self.network: bool = config["network"]
        self.tmp_size: int = config["tmp_size"]
        self.keep: list[str] = config.get("keep", [])
        self.shared: list[str] = config.get("shared", [])
        self.pid = os.getpid()
        self.uid, self.gid = os.geteuid(), os.getegid()
        self.kernels: dict[int, int] = {}  # the zygote's child -> the kernel (one process without isolation)
        self.starting: dict[int, _Starting] = {}  # by the pipe each child answers on
        self.prebuilt: list[str] | None = None  # the argv (but -f) of the IPKernelApp prebuilt here, if any

    # -- the zygote's side -------------------------------------------------------------------------------

    def fork(self, request: dict[str, Any]) -> None:
        """Fork a kernel; its answer comes through ``answer`` once it has its sandbox. Forks overlap: the zygote
        forks the next one while earlier ones make their namespaces."""
        from_child, to_zygote = os.pipe()
        from_zygote, to_child = os.pipe()
        try:
            child = os.fork()
        except OSError:
            for fd in (from_child, to_zygote, from_zygote, to_child):
                os.close(fd)
            raise
        if child == 0:
            os.close(from_child)
            os.close(to_child)
            self._child(request, to_zygote, from_zygote)  # never returns
        os.close(to_zygote)
        os.close(from_zygote)
        deadline = time.monotonic() + _HANDSHAKE_TIMEOUT
        self.starting[from_child] = _Starting(request["id"], child, to_child, deadline, mapped=not self.isolate)

    def answer(self, fd: int) -> dict[str, Any] | None:
        """The next step of the child answering on ``fd``: its id maps, then its pid or why it failed."""
        starting = self.starting[fd]
        try:
            data = os.read(fd, 4096)
            if not data or data.startswith(b"E"):
                raise OSError(data[1:].decode(errors="replace") or "the kernel exited while starting")
            if not starting.mapped:
                if data != b"u":
                    raise OSError(f"the kernel did not make its namespaces: {data[:100]!r}")
                isolate.write_id_maps(starting.child, self.uid, self.gid)
                os.write(starting.to_child, b"k")
                starting.mapped = True
                return None
            if not data.startswith(b"P"):
                raise OSError(f"unexpected answer from the kernel: {data[:100]!r}")
            pid = int(data[1:])
        except (OSError, ValueError) as exc:
            return self._failed(fd, str(exc))
        self._forget(fd)
        self.kernels[starting.child] = pid
        return {"id": starting.id, "pid": pid}

    def overdue(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        late = [fd for fd, s in self.starting.items() if s.deadline <= now]
        return [self._failed(fd, "the kernel did not answer in time") for fd in late]

    def _failed(self, fd: int, why: str) -> dict[str, Any]:
        starting = self._forget(fd)
        with contextlib.suppress(ProcessLookupError):
            os.kill(starting.child, signal.SIGKILL)
        return {"id": starting.id, "error": why}

    def _forget(self, fd: int) -> _Starting:
        starting = self.starting.pop(fd)
        os.close(fd)
        os.close(starting.to_child)
        return starting

    def reap(self) -> list[dict[str, Any]]:
        exits = []
        while True:
            try:
                child, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if child == 0:
                break
            pid = self.kernels.pop(child, None)
            if pid is not None:
                exits.append({"exit": pid, "status": os.waitstatus_to_exitcode(status)})
        return exits

    # -- the child's side --------------------------------------------------------------------------------

    def _child(self, request: dict[str, Any], to_zygote: int, from_zygote: int) -> NoReturn:
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            isolate.die_with_parent(self.pid)
            _plain_fds(keep=(to_zygote, from_zygote))
            if self.isolate:
                isolate.unshare(self.network)
                os.write(to_zygote, b"u")
                if os.read(from_zygote, 1) != b"k":
                    os._exit(1)
                isolate.private_mounts(request["kernel_dir"], self.tmp_size, self.keep, self.shared)
                alive_r, alive_w = os.pipe()
                sealed_r, sealed_w = os.pipe()
                kernel = os.fork()
                if kernel != 0:
                    os.close(alive_r)
                    os.close(sealed_w)
                    answer = _read(sealed_r, 4096)
                    if answer != b"s":
                        os.kill(kernel, signal.SIGKILL)
                        raise OSError(answer[1:].decode(errors="replace") or "the kernel could not seal its sandbox")
                    os.write(to_zygote, f"P{kernel}".encode())
                    os.close(to_zygote)
                    _mirror(kernel)  # never returns
                for fd in (alive_w, sealed_r, to_zygote, from_zygote):
                    os.close(fd)
                _seal(alive_r, sealed_w, self.network)
            else:
                os.write(to_zygote, f"P{os.getpid()}".encode())
                os.close(to_zygote)
                os.close(from_zygote)
        except BaseException as exc:
            _fail(to_zygote, exc)
        become_kernel(request, self.isolate, self.prebuilt)


def _seal(alive: int, sealed: int, network: bool) -> None:
    """In the kernel, pid 1 of its namespaces: the last of its sandbox, said to its waiter (or why not)."""
    try:
        isolate.die_with_parent_pipe(alive)
        isolate.seal(network)
    except BaseException as exc:
        _fail(sealed, exc)
    os.write(sealed, b"s")
    os.close(sealed)


def _fail(fd: int, exc: BaseException) -> NoReturn:
    """A forked child that cannot become a kernel: why, to whoever waits on ``fd``, then gone."""
    try:
        os.write(fd, b"E" + f"{type(exc).__name__}: {exc}".encode()[:2000])
    finally:
        os._exit(127)


@dataclass
class _Starting:
    """A forked child on its way to being a kernel."""

    id: int
    child: int
    to_child: int
    deadline: float
    mapped: bool


def _request(zygote: Zygote, line: bytes) -> dict[str, Any] | None:
    """Start one request; an answer now only if it failed at once (a fork refused: no memory, too many
    processes). A request that fails fails alone."""
    try:
        request = json.loads(line)
    except ValueError as exc:
        return {"id": None, "error": f"unreadable request: {exc}"}
    try:
        zygote.fork(request)
    except (OSError, KeyError, TypeError) as exc:
        return {"id": request.get("id") if isinstance(request, dict) else None, "error": repr(exc)}
    return None


def _read(fd: int, size: int) -> bytes:
    ready, _, _ = select.select([fd], [], [], _HANDSHAKE_TIMEOUT)
    if not ready:
        raise OSError("the kernel did not answer in time")
    return os.read(fd, size)


def _plain_fds(keep: tuple[int, ...]) -> None:
    """stdin from /dev/null, stdout to the zygote's stderr (the service's log), nothing else of the zygote's:
    least of all its control pipes."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(2, 1)
    os.close(null)
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 65536)


def _mirror(kernel: int) -> None:
    """Wait for the kernel and exit as it did, so that the zygote (and the service) learn its status."""
    _, status = os.waitpid(kernel, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig != signal.SIGKILL:
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def _preload(modules: list[str]) -> list[str]:
    loaded = []
    for name in (*PRELOADED, *modules):
        try:
            importlib.import_module(name)
            loaded.append(name)
        except Exception:  # a preload that fails is imported by the kernel itself, as without a zygote
            pass
    return loaded


def next_wait(deadlines: list[float], now: float, idle: float = 60.0) -> float:
    """Seconds to wait for the next event: until the nearest handshake deadline, else ``idle``. Deadlines are
    points in time: an idle default taken as one made every wait zero, and the zygote spun."""
    return max(0.0, min(deadlines, default=now + idle) - now)


def main() -> None:
    config = json.loads(sys.argv[1])
    started = time.perf_counter()
    loaded = _preload(config.get("preload", []))
    kernel_argv = config.get("kernel_argv")
    prebuilt = kernel_argv if kernel_argv is not None and prebuild_app(kernel_argv) else None
    shell = prebuilt is not None and prebuild_shell()
    threads = len(os.listdir("/proc/self/task"))
    gc.collect()
    gc.freeze()  # the preloaded objects are never collected: a collection in a kernel does not touch their pages
    zygote = Zygote(config)
    zygote.prebuilt = prebuilt
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    out = sys.stdout
    ready = {"ready": True, "pid": zygote.pid, "threads": threads, "loaded": loaded, "prebuilt": prebuilt is not None,
             "shell": shell}  # fmt: skip
    ready["seconds"] = round(time.perf_counter() - started, 3)
    out.write(json.dumps(ready) + "\n")
    out.flush()
    pending = b""
    while True:
        wait = next_wait([s.deadline for s in zygote.starting.values()], time.monotonic())
        readable, _, _ = select.select([0, wake_r, *zygote.starting], [], [], wait)
        replies: list[dict[str, Any] | None] = []
        if wake_r in readable:
            os.read(wake_r, 4096)
        replies += [zygote.answer(fd) for fd in readable if fd in zygote.starting]
        if 0 in readable:
            data = os.read(0, 65536)
            if not data:
                return  # the service is gone; the kernels follow (parent-death signal)
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:  # forks start here; each answers on its own pipe when its sandbox is made
                if line.strip():
                    replies.append(_request(zygote, line))
        replies += zygote.overdue()
        replies += zygote.reap()
        replies = [r for r in replies if r is not None]
        if replies:
            out.write("".join(json.dumps(r) + "\n" for r in replies))
            out.flush()


if __name__ == "__main__":
    main()
