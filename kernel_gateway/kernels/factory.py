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
from collections.abc import Callable, Mapping
from pathlib import Path

import zmq.asyncio

from notebook_state.checkpoint import Checkpointer, run_in_kernel

from ..types import ManagerSettings
from .kernel import Kernel
from .launch import kernel_environment, start_kernel
from .sandbox import Sandbox, SandboxKind, SandboxOptions, UidPool, detect

log = logging.getLogger(__name__)

_ENV_CALL_TIMEOUT = 10.0
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

MemoryLimits = Callable[[str], int]
"""The address-space limit in bytes for a tenant's kernels (0: none)."""


def scratch_parent() -> str | None:
    """/dev/shm when it has room: kernels' sockets and checkpoint hand-overs then never touch a disk."""
    shm = Path("/dev/shm")
    try:
        if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 2 * 1024**3:
            return str(shm)
    except OSError:
        pass
    return None


def sandbox_options(settings: ManagerSettings) -> SandboxOptions:
    hidden = [settings.data_dir.resolve()]
    if settings.tenants_file is not None:
        hidden.append(settings.tenants_file.resolve())
    return SandboxOptions(
        mode=settings.sandbox,
        tmp_size=int(settings.sandbox_tmp_size),
        binds=tuple(p.resolve() for p in settings.sandbox_bind),
        hidden=(*hidden, Path("/etc/shadow"), Path("/etc/gshadow")),
        network=settings.sandbox_network,
        uid_base=settings.sandbox_uid_base,
        uid_count=settings.sandbox_uid_count,
    )


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
        self.memory_limits: MemoryLimits = lambda tenant: int(settings.kernel_memory_limit)
        self._options = sandbox_options(settings)
        self._sandbox: Sandbox | None = None
        self._detecting = asyncio.Lock()
        self._uids = UidPool(self._options.uid_base, self._options.uid_count)
        self._kernels: weakref.WeakSet[Kernel] = weakref.WeakSet()

    async def sandbox(self) -> Sandbox:
        """What isolates this replica's kernels, found out on first use (and logged: a weak one loudly)."""
        async with self._detecting:
            if self._sandbox is None:
                if os.geteuid() == 0:
                    # Kernels with uids of their own must reach their own directory, never list the others.
                    self.runtime_dir.chmod(0o711)
                probe = self.runtime_dir / f"probe-{uuid.uuid4().hex[:8]}"
                self._sandbox = await detect(self._options, probe)
                shutil.rmtree(probe, ignore_errors=True)
                if self._sandbox.kind is SandboxKind.BWRAP:
                    log.info("kernel sandbox: %s", self._sandbox.detail)
                else:
                    log.warning("kernel sandbox is weak: %s (see docs/security.md)", self._sandbox.detail)
            return self._sandbox

    def _take_uid(self) -> int:
        self._uids.used = {k.uid for k in self._kernels if k.uid is not None and k.km.has_kernel}
        return self._uids.take()

    async def start(self, name: str, env: Mapping[str, str] | None) -> Kernel:
        settings = self.settings
        sandbox = await self.sandbox()
        kernel_dir = self.runtime_dir / str(uuid.uuid4())
        kernel_dir.mkdir(mode=0o700)
        uid = self._take_uid() if sandbox.own_uid else None
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
        try:
            kernel = await start_kernel(
                name, self.context, kernel_dir, full_env, settings.kernel_startup_timeout,
                sandbox.prefix(kernel_dir, uid), uid, cwd,
            )  # fmt: skip
        except BaseException:
            shutil.rmtree(kernel_dir, ignore_errors=True)
            raise
        kernel.uid = uid
        self._kernels.add(kernel)
        if name != settings.kernel_name:
            return kernel
        try:
            if settings.checkpoint:
                await self.checkpointer.install(kernel, settings.kernel_startup_timeout)
            if settings.preload_modules:
                # Imported, not bound: a session's first `import pandas` (or a restore that needs it) is instant.
                names = tuple(settings.preload_modules)
                code = (
                    f"[__import__('importlib').import_module(m) for m in {names!r} "
                    "if __import__('importlib.util').util.find_spec(m)]"
                )
                await run_in_kernel(kernel, code, settings.kernel_startup_timeout)
        except Exception:
            await kernel.shutdown(now=True)
            raise
        return kernel

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

    def close(self) -> None:
        self.context.destroy(linger=0)
