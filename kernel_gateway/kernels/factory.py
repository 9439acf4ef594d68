"""Starting the kernels a replica serves: each in its sandbox and directory of its own, with an allow-listed
environment, the capture module loaded, heavy modules preloaded; and, once a session takes one, its
frontend's KERNEL_* variables and its tenant's memory limit applied."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import uuid
import weakref
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import zmq
import zmq.asyncio

from notebook_state.checkpoint import Checkpointer, run_in_kernel

from ..types import ManagerSettings
from .forked import ZygoteClient, ZygoteGone
from .kernel import Kernel, KernelStartFailed
from .launch import IPYKERNEL_ARGUMENTS, kernel_environment, start_kernel
from .options import sandbox_options
from .sandbox import Sandbox, SandboxKind, SandboxOptions, UidPool, detect, needed_paths

log = logging.getLogger(__name__)

_ENV_CALL_TIMEOUT = 10.0
_FORK_FAILURES = 3
_RECONNECT_MS = 5
_ZYGOTE_RESTARTS = 3
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

MemoryLimits = Callable[[str], int]
"""The address-space limit in bytes for a tenant's kernels (0: none)."""


class KernelFactory:
    def __init__(
        self, settings: ManagerSettings, runtime_dir: Path, env_prefix: str, checkpointer: Checkpointer
    ) -> None:
        self.settings = settings
        self.runtime_dir = runtime_dir
        self.env_prefix = env_prefix
        self.checkpointer = checkpointer
        checkpointer.max_handover_bytes = int(settings.checkpoint_max_bytes)
        self.context = zmq.asyncio.Context()
        # Only jupyter_client's own sockets use this context (the manager's control channel, for a shutdown
        # request); the relay's are ``wire.Link``s, which retry their own connects. A socket connecting before
        # its kernel has bound retries every 100 ms by default; Unix sockets on this host: retrying is cheap.
        self.context.setsockopt(zmq.RECONNECT_IVL, _RECONNECT_MS)
        self.memory_limits: MemoryLimits = lambda tenant: int(settings.kernel_memory_limit)
        self._options = sandbox_options(settings)
        self._sandbox: Sandbox | None = None
        self._detecting = asyncio.Lock()
        # How the sandbox is found out: replica.py may have started the probe before the service's imports.
        self.detect: Callable[[SandboxOptions, Path], Awaitable[Sandbox]] = detect
        self._uids = UidPool(self._options.uid_base, self._options.uid_count)
        self._kernels: weakref.WeakSet[Kernel] = weakref.WeakSet()
        self._zygote: asyncio.Task[ZygoteClient | None] | None = None
        self._fork = False  # kernels of the default kernelspec are forked from the zygote
        self._zygote_uid: int | None = None
        self._fork_failures = 0
        self._zygote_restarts = 0

    async def sandbox(self) -> Sandbox:
        """What isolates this replica's kernels, found out on first use (and logged: a weak one loudly)."""
        async with self._detecting:
            if self._sandbox is None:
                if os.geteuid() == 0:
                    # Kernels with uids of their own must reach their own directory, never list the others.
                    self.runtime_dir.chmod(0o711)
                probe = self.runtime_dir / f"probe-{uuid.uuid4().hex[:8]}"
                self._sandbox = await self.detect(self._options, probe)
                shutil.rmtree(probe, ignore_errors=True)
                if self._sandbox.kind is SandboxKind.BWRAP:
                    log.info("kernel sandbox: %s", self._sandbox.detail)
                else:
                    log.warning("kernel sandbox is weak: %s (see docs/security.md)", self._sandbox.detail)
                self._fork = fork_kernels(self.settings.kernel_launch, self._sandbox)
            return self._sandbox

    async def _start_zygote(self, sandbox: Sandbox) -> ZygoteClient | None:
        """The replica's kernel zygote (``zygote.py``); None (kernels are exec'd) when it cannot start."""
        uid = self._uids.take() if sandbox.own_uid else None
        env = kernel_environment(
            os.environ, self.env_prefix, self.settings.allowed_kernel_env_prefix, self.settings.kernel_env_allow
        )
        config = {
            "isolate": sandbox.kind is SandboxKind.BWRAP, "network": self._options.network,
            "tmp_size": self._options.tmp_size, "preload": list(self.settings.preload_modules),
            "kernel_argv": IPYKERNEL_ARGUMENTS,
            "keep": [p for p in needed_paths() if p.startswith(("/tmp/", "/dev/shm/"))],
            "shared": [str(b) for b in self._options.binds if str(b).startswith(("/tmp/", "/dev/shm/"))],
        }  # fmt: skip
        try:
            prefix = sandbox.zygote_prefix(self.runtime_dir, uid)
            zygote = await ZygoteClient.start(prefix, env, config, self.settings.kernel_startup_timeout)
        except (OSError, RuntimeError, TimeoutError, ValueError) as exc:
            log.error("kernel zygote did not start, kernels are exec'd: %r", exc)
            return None
        self._zygote_uid = uid
        log.info("kernel zygote: pid %s, ready in %.2fs, IPKernelApp prebuilt: %s, IPython shell prebuilt: %s, "
                 "preloaded %s", zygote.ready.get("pid"), zygote.ready.get("seconds", 0),
                 bool(zygote.ready.get("prebuilt")), bool(zygote.ready.get("shell")),
                 ", ".join(zygote.ready.get("loaded", [])))  # fmt: skip
        return zygote

    async def zygote(self) -> ZygoteClient | None:
        """The running zygote when kernels of the default kernelspec are forked, else None (exec'd). Started on
        first use: a replica's first kernel may be exec'd (``fork=False``) without waiting for it, or sharing the
        CPU with its boot."""
        if self._zygote is None and self._fork and self._sandbox is not None:
            self._zygote = asyncio.get_running_loop().create_task(self._start_zygote(self._sandbox))
        if self._zygote is None:
            return None
        zygote = await asyncio.shield(self._zygote)
        if zygote is None or zygote.alive:
            return zygote
        if zygote.stopped or self._sandbox is None:
            return None
        if self._zygote_restarts >= _ZYGOTE_RESTARTS:
            if self._zygote_restarts == _ZYGOTE_RESTARTS:
                self._zygote_restarts += 1
                log.error("kernel zygote died %d times: new kernels are exec'd", _ZYGOTE_RESTARTS + 1)
            return None
        # It died (killed, out of memory) and its kernels with it; their sessions are restored onto new ones.
        self._zygote_restarts += 1
        log.warning("kernel zygote restarting (%d of at most %d)", self._zygote_restarts, _ZYGOTE_RESTARTS)
        self._zygote = asyncio.get_running_loop().create_task(self._start_zygote(self._sandbox))
        zygote = await asyncio.shield(self._zygote)
        return zygote if zygote is not None and zygote.alive else None

    def _take_uid(self) -> int:
        self._uids.used = {k.uid for k in self._kernels if k.uid is not None and k.km.has_kernel}
        return self._uids.take()

    async def start(self, name: str, env: Mapping[str, str] | None, preload: bool = True, fork: bool = True) -> Kernel:
        """A ready kernel; ``preload=False`` leaves the heavy modules out and ``fork=False`` execs it (a cold
        start's first kernel: its restore waits neither for the preloads nor for the zygote's boot)."""
        settings = self.settings
        sandbox = await self.sandbox()
        kernel_dir = self.runtime_dir / str(uuid.uuid4())
        kernel_dir.mkdir(mode=0o700)
        zygote = await self.zygote() if fork and name == settings.kernel_name else None
        uid = self._zygote_uid if zygote is not None else self._take_uid() if sandbox.own_uid else None
        if uid is not None:
            os.chown(kernel_dir, uid, uid)
        full_env = kernel_environment(
            os.environ, self.env_prefix, settings.allowed_kernel_env_prefix, settings.kernel_env_allow
        )
        cwd = None
        if sandbox.kind is SandboxKind.UID:
            full_env["HOME"] = str(kernel_dir)
            cwd = kernel_dir
        full_env.update(env or {})
        # A forked kernel installs the capture module itself before it serves: no install request to wait for.
        capture = None
        if zygote is not None and settings.checkpoint and name == settings.kernel_name:
            capture = {"auto_dir": str(kernel_dir / "auto"), "reply": self.checkpointer.reply_handover}
        try:
            try:
                prefix = [] if zygote is not None else sandbox.prefix(kernel_dir, uid)
                kernel = await start_kernel(
                    name, self.context, kernel_dir, full_env, settings.kernel_startup_timeout, prefix, uid, cwd,
                    zygote, capture,
                )  # fmt: skip
            except KernelStartFailed as exc:
                if zygote is None or not isinstance(exc.__cause__, ZygoteGone):
                    raise
                self._fork_failed(zygote, exc.__cause__)
                kernel_dir.mkdir(mode=0o700, exist_ok=True)  # the failed start removed it
                uid = self._take_uid() if sandbox.own_uid else None
                if uid is not None:
                    os.chown(kernel_dir, uid, uid)
                kernel = await start_kernel(
                    name, self.context, kernel_dir, full_env, settings.kernel_startup_timeout,
                    sandbox.prefix(kernel_dir, uid), uid, cwd,
                )  # fmt: skip
        except BaseException:
            shutil.rmtree(kernel_dir, ignore_errors=True)
            raise
        if kernel.forked:
            self._fork_failures = 0
        kernel.uid = uid
        self._kernels.add(kernel)
        if name != settings.kernel_name:
            return kernel
        try:
            captured = kernel.captured and str(self.checkpointer.auto_dir(kernel)) == str(kernel_dir / "auto")
            if settings.checkpoint and not captured:
                await self.checkpointer.install(kernel, settings.kernel_startup_timeout)
            if preload and not kernel.forked:  # a forked kernel has them from the zygote
                await self.preload(kernel)
        except BaseException:
            # Cancelled too (the pool closing, a request gone): nobody else holds this kernel, and a live one
            # would outlive the replica's shutdown.
            await kernel.shutdown(now=True)
            raise
        return kernel

    def _fork_failed(self, zygote: ZygoteClient, why: BaseException) -> None:
        """This kernel is exec'd instead; a zygote that keeps failing is given up (every kernel exec'd)."""
        self._fork_failures += 1
        log.warning("kernel zygote could not fork a kernel, exec'ing it: %s", why)
        if self._fork_failures >= _FORK_FAILURES:
            log.error("kernel zygote failed %d forks in a row: stopped, new kernels are exec'd", self._fork_failures)
            zygote.kill()

    async def preload(self, kernel: Kernel) -> None:
        """Import the preloaded modules. Imported, not bound: a session's first `import pandas` (or a restore
        that needs it) is instant."""
        if self.settings.preload_modules:
            names = tuple(self.settings.preload_modules)
            code = (
                f"[__import__('importlib').import_module(m) for m in {names!r} "
                "if __import__('importlib.util').util.find_spec(m)]"
            )
            await run_in_kernel(kernel, code, self.settings.kernel_startup_timeout)

    def allowed_env(self, env: Mapping[str, str]) -> dict[str, str]:
        """The variables a frontend may set in its kernel: KERNEL_* (configurable prefix), valid names."""
        prefix = self.settings.allowed_kernel_env_prefix
        return {k: str(v) for k, v in env.items() if k.startswith(prefix) and _ENV_NAME.match(k)}

    async def apply_env(self, kernel: Kernel, env: Mapping[str, str], tenant: str = "") -> None:
        """Make a pooled kernel its session's: the frontend's variables and the tenant's memory limit."""
        if kernel.name != self.settings.kernel_name:
            return
        code = ""
        limit = self.memory_limits(tenant)
        if limit > 0:
            code += f"__import__('kernel_gateway.kernels.memory_guard', fromlist=['_']).install({limit})\n"
            kernel.memory_limit = limit
        if env:
            # A pooled kernel was started before the request named its environment, so set it in the process
            # (os.environ also feeds any child process the user starts).
            code += f"__import__('os').environ.update({dict(env)!r})\n"
        workdir = env.get("KERNEL_WORKING_DIR")
        if workdir:
            # jupyter_server sends the notebook's directory; honour it where the kernel can see it (a gateway
            # beside the notebook server, or a directory bound into the sandbox), as Enterprise Gateway does.
            code += f"if __import__('os').path.isdir({workdir!r}): __import__('os').chdir({workdir!r})\n"
        if code:
            await run_in_kernel(kernel, code, _ENV_CALL_TIMEOUT)

    async def close(self) -> None:
        """The zygote stopped and waited for (a start under way cancelled and waited for too: its process is
        killed and reaped while the loop still runs), then the ZMQ context."""
        task, self._zygote = self._zygote, None
        if task is not None:
            task.cancel()  # nothing if it is done
            (zygote,) = await asyncio.gather(task, return_exceptions=True)
            if isinstance(zygote, ZygoteClient):
                await zygote.close()
        self.context.destroy(linger=0)


def fork_kernels(launch: str, sandbox: Sandbox) -> bool:
    """Whether kernels of the default kernelspec are forked from a zygote (``--kernel-launch``).

    auto forks where that isolates kernels as well as exec'ing them does: bubblewrap without uids of their own
    (forked kernels share the zygote's uid), or no sandbox at all. ``fork`` asks for it wherever namespaces
    or nothing isolate kernels; a sandbox of uids alone always execs."""
    if launch == "exec" or sandbox.kind is SandboxKind.UID:
        return False
    if launch == "fork":
        return True
    return not sandbox.own_uid
