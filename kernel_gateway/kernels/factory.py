"""Starting the kernels a replica serves: a sanitised environment, the capture module loaded, heavy modules
preloaded, and a frontend's KERNEL_* variables applied to a kernel that was started before it asked."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

import zmq.asyncio

from notebook_state.checkpoint import Checkpointer, run_in_kernel

from ..types import ManagerSettings
from .kernel import Kernel, start_kernel

_ENV_CALL_TIMEOUT = 10.0
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def scratch_parent() -> str | None:
    """/dev/shm when it has room: kernels' sockets and checkpoint hand-overs then never touch a disk."""
    shm = Path("/dev/shm")
    try:
        if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 2 * 1024**3:
            return str(shm)
    except OSError:
        pass
    return None


class KernelFactory:
    def __init__(
        self, settings: ManagerSettings, runtime_dir: Path, env_prefix: str, checkpointer: Checkpointer
    ) -> None:
        self.settings = settings
        self.runtime_dir = runtime_dir
        self.env_prefix = env_prefix
        self.checkpointer = checkpointer
        self.context = zmq.asyncio.Context()

    async def start(self, name: str, env: Mapping[str, str] | None) -> Kernel:
        settings = self.settings
        kernel = await start_kernel(
            name, self.context, self.runtime_dir, self.env_prefix, settings.kernel_startup_timeout, env
        )
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

    async def apply_env(self, kernel: Kernel, env: Mapping[str, str]) -> None:
        # A pooled kernel was started before the request named its environment, so set it in the process
        # (os.environ also feeds any child process the user starts).
        if not env or kernel.name != self.settings.kernel_name:
            return
        code = f"__import__('os').environ.update({dict(env)!r})"
        workdir = env.get("KERNEL_WORKING_DIR")
        if workdir:
            # jupyter_server sends the notebook's directory; honour it where it exists on this machine (a
            # gateway beside the notebook server), as Enterprise Gateway does.
            code += f"\nif __import__('os').path.isdir({workdir!r}): __import__('os').chdir({workdir!r})"
        await run_in_kernel(kernel, code, _ENV_CALL_TIMEOUT)

    def close(self) -> None:
        self.context.destroy(linger=0)
