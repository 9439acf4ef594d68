"""The session registry of one replica: creates sessions on warm kernels, finds, culls and ends them.

The registry is in-process for now; the state store (checkpoints, leases) plugs in here, behind the same
methods, so that the HTTP layer does not change when sessions become portable between replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

import zmq.asyncio
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

from .errors import Draining, InvalidSessionId, KernelSpecNotFound, SessionExists, SessionNotFound
from .execution import ExecutionResult, OutputCallback
from .kernel import Kernel, start_kernel
from .pool import KernelPool
from .session import Session
from .types import Channel, ManagerSettings

log = logging.getLogger(__name__)

SESSION_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_CULL_INTERVAL_MAX = 30.0
_ENV_CALL_TIMEOUT = 10.0
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def validate_session_id(session_id: str) -> str:
    if not SESSION_ID_PATTERN.match(session_id):
        raise InvalidSessionId(
            f"invalid session id {session_id!r}: use 1-128 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return session_id


class SessionManager:
    """Every session this replica serves, and the warm pool their kernels come from."""

    def __init__(self, settings: ManagerSettings, env_prefix: str, runtime_dir: Path | None = None) -> None:
        self.settings = settings
        self.kernel_specs = KernelSpecManager()
        self._context = zmq.asyncio.Context()
        # Unix socket paths are limited to ~107 bytes, so kernels' sockets live in a short private directory.
        self._runtime_dir = runtime_dir or Path(tempfile.mkdtemp(prefix="skg-"))
        self._env_prefix = env_prefix
        self.pool = KernelPool(self._start_kernel, settings.kernel_name, settings.pool_size)
        self.sessions: dict[str, Session] = {}
        self.draining = False
        self._culler: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.check_kernel_name(self.settings.kernel_name)
        self.pool.start()
        if self.settings.session_idle_timeout > 0:
            self._culler = asyncio.get_running_loop().create_task(self._cull_idle())

    async def _start_kernel(self, name: str, env: Mapping[str, str] | None) -> Kernel:
        return await start_kernel(
            name,
            self._context,
            self._runtime_dir,
            self._env_prefix,
            self.settings.kernel_startup_timeout,
            env,
        )

    # -- kernelspecs -------------------------------------------------------------------------------------

    def check_kernel_name(self, name: str) -> str:
        try:
            self.kernel_specs.get_kernel_spec(name)
        except NoSuchKernel as exc:
            raise KernelSpecNotFound(name) from exc
        return name

    # -- sessions ----------------------------------------------------------------------------------------

    async def create(
        self,
        session_id: str | None = None,
        kernel_name: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Session:
        if self.draining:
            raise Draining()
        sid = validate_session_id(session_id) if session_id else str(uuid.uuid4())
        if sid in self.sessions:
            raise SessionExists(sid)
        name = self.check_kernel_name(kernel_name or self.settings.kernel_name)
        kernel_env = self._kernel_env(env or {})

        async def acquire() -> Kernel:
            kernel = await self.pool.acquire(name, kernel_env)
            await self._apply_env(kernel, kernel_env)
            return kernel

        kernel = await acquire()
        if sid in self.sessions:  # another request took the id while the kernel started
            await kernel.shutdown(now=True)
            raise SessionExists(sid)
        if self.draining:
            await kernel.shutdown(now=True)
            raise Draining()
        session = Session(sid, kernel, acquire)
        self.sessions[sid] = session
        log.info("session %s created on kernel %s (%s)", sid, kernel.id, name)
        return session

    def _kernel_env(self, env: Mapping[str, str]) -> dict[str, str]:
        prefix = self.settings.allowed_kernel_env_prefix
        return {k: str(v) for k, v in env.items() if k.startswith(prefix) and _ENV_NAME.match(k)}

    async def _apply_env(self, kernel: Kernel, env: Mapping[str, str]) -> None:
        # A pooled kernel was started before the request named its environment, so set it in the process
        # (os.environ also feeds any child process the user starts).
        if not env or kernel.name != self.pool.kernel_name:
            return
        code = f"__import__('os').environ.update({dict(env)!r})"
        await kernel.call(
            Channel.SHELL,
            "execute_request",
            {"code": code, "silent": True, "store_history": False, "user_expressions": {}, "allow_stdin": False},
            timeout=_ENV_CALL_TIMEOUT,
        )

    def get(self, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None:
            raise SessionNotFound(session_id)
        return session

    def list(self) -> list[Session]:
        return list(self.sessions.values())

    async def delete(self, session_id: str) -> None:
        session = self.sessions.pop(session_id, None)
        if session is None:
            raise SessionNotFound(session_id)
        await session.close()
        log.info("session %s deleted", session_id)

    async def execute(
        self,
        session_id: str,
        code: str,
        timeout: float,
        on_output: OutputCallback | None = None,
    ) -> ExecutionResult:
        if self.draining:
            raise Draining()
        session = self.get(session_id)
        return await session.execute(
            code, timeout, self.settings.output_limit, self.settings.interrupt_grace, on_output
        )

    # -- housekeeping ------------------------------------------------------------------------------------

    async def _cull_idle(self) -> None:
        timeout = self.settings.session_idle_timeout
        interval = min(max(timeout / 4, 0.5), _CULL_INTERVAL_MAX)
        while True:
            await asyncio.sleep(interval)
            now = time.time()
            for session in list(self.sessions.values()):
                if session.connections or session.busy:
                    continue
                if now - session.last_activity >= timeout:
                    log.info("session %s idle for %.0f s: shutting it down", session.id, now - session.last_activity)
                    with contextlib.suppress(SessionNotFound):
                        await self.delete(session.id)

    async def wait_idle(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for running cells to finish (SIGTERM drain)."""

        async def drained() -> None:
            await asyncio.gather(*(s.wait_idle() for s in list(self.sessions.values())))

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(drained(), grace)

    async def close(self) -> None:
        self.draining = True
        if self._culler is not None:
            self._culler.cancel()
        sessions = list(self.sessions.values())
        self.sessions.clear()
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
        await self.pool.close()
        self._context.destroy(linger=0)
        shutil.rmtree(self._runtime_dir, ignore_errors=True)
