"""A session: one notebook's kernel, the frontends attached to it, and the routing between them."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .execution import CellRun, ExecutionResult, ExecutionStatus, OutputCallback
from .kernel import Kernel, KernelDied, KernelState
from .types import Channel, JSONDict, KernelMessage, Subscriber

log = logging.getLogger(__name__)

KernelSource = Callable[[], Awaitable[Kernel]]

KERNEL_DIED_NOTICE = "the kernel process exited; the session continues on a fresh kernel and its state was lost"
TIMEOUT_RESTART_NOTICE = (
    "the cell did not stop after an interrupt; its kernel was replaced and the session's state was lost"
)


class SessionState(enum.Enum):
    ACTIVE = "active"
    RESTARTING = "restarting"
    CLOSED = "closed"


class Session:
    """Routes a kernel's messages to whoever asked, and serialises REST cells.

    Replies on shell, control and stdin go to the frontend whose request they answer (by the parent's
    ``msg_id``); iopub goes to every attached WebSocket and to the REST run whose cell it belongs to.
    """

    def __init__(self, session_id: str, kernel: Kernel, acquire: KernelSource) -> None:
        self.id = session_id
        self.kernel = kernel
        self.kernel_name = kernel.name
        self.state = SessionState.ACTIVE
        self.execution_state = "idle"
        self.execution_count = 0
        self.created = time.time()
        self.last_activity = self.created
        self.kernel_restarts = 0
        self.lock = asyncio.Lock()
        self.connections: set[Subscriber] = set()
        self._routes: dict[str, Subscriber] = {}
        self._acquire = acquire
        self._kernel_ready = asyncio.Event()
        self._kernel_ready.set()
        self._pending_notices: list[str] = []
        self._replacing: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        kernel.listener = self

    # -- kernel events -----------------------------------------------------------------------------------

    def on_kernel_message(self, msg: KernelMessage) -> None:
        self.last_activity = time.time()
        if msg.channel is Channel.IOPUB:
            if msg.msg_type == "status":
                self._set_execution_state(str(msg.content.get("execution_state", self.execution_state)))
            elif msg.msg_type == "execute_input":
                count = msg.content.get("execution_count")
                if isinstance(count, int):
                    self.execution_count = count
            route = self._routes.get(msg.parent_id)
            if route is not None and route not in self.connections:
                route.deliver(msg)
            for conn in list(self.connections):
                conn.deliver(msg)
            return
        route = self._routes.get(msg.parent_id)
        if route is None:
            return
        if msg.channel is not Channel.STDIN and msg.msg_type.endswith("_reply") and not isinstance(route, CellRun):
            del self._routes[msg.parent_id]
        route.deliver(msg)

    def on_kernel_died(self, kernel_id: str) -> None:
        if kernel_id != self.kernel.id or self.state is SessionState.CLOSED:
            return
        log.warning("session %s: kernel %s died", self.id, kernel_id)
        self._start_replacement(KERNEL_DIED_NOTICE)

    # -- frontends ---------------------------------------------------------------------------------------

    def attach(self, conn: Subscriber) -> None:
        self.connections.add(conn)

    def detach(self, conn: Subscriber) -> None:
        self.connections.discard(conn)
        for msg_id in [k for k, v in self._routes.items() if v is conn]:
            del self._routes[msg_id]

    async def forward(self, conn: Subscriber, msg: KernelMessage) -> None:
        """Send a frontend's message to the kernel, remembering who should get the reply."""
        self.last_activity = time.time()
        await self._kernel_ready.wait()
        if msg.channel is not Channel.STDIN and msg.msg_id:
            self._routes[msg.msg_id] = conn
        self.kernel.send(msg)

    # -- REST execution ----------------------------------------------------------------------------------

    async def execute(
        self,
        code: str,
        timeout: float,
        output_limit: int,
        interrupt_grace: float,
        on_output: OutputCallback | None = None,
    ) -> ExecutionResult:
        """Run one cell; outputs and reply in nbformat shape. REST cells of a session run one at a time."""
        async with self.lock:
            await self._kernel_ready.wait()
            notices, self._pending_notices = self._pending_notices, []
            run = CellRun(output_limit, on_output)
            kernel = self.kernel
            msg = kernel.new_message(
                Channel.SHELL,
                "execute_request",
                {
                    "code": code,
                    "silent": False,
                    "store_history": True,
                    "user_expressions": {},
                    "allow_stdin": False,
                    "stop_on_error": True,
                },
            )
            self._routes[msg.msg_id] = run
            self.last_activity = time.time()
            try:
                kernel.send(msg)
                result = await self._await_cell(run, kernel, timeout, interrupt_grace)
            except KernelDied:
                run.abort()
                result = run.result(self.id)
            finally:
                self._routes.pop(msg.msg_id, None)
                self.last_activity = time.time()
            if run.kernel_died and result.status is not ExecutionStatus.TIMEOUT:
                result.status = ExecutionStatus.ERROR
                result.error = {"ename": "KernelDied", "evalue": KERNEL_DIED_NOTICE, "traceback": []}
                result.kernel_restarted = True
                self._pending_notices.clear()
            result.notices = notices + result.notices
            if notices:
                result.kernel_restarted = True
            return result

    async def _await_cell(
        self, run: CellRun, kernel: Kernel, timeout: float, interrupt_grace: float
    ) -> ExecutionResult:
        try:
            await asyncio.wait_for(run.done.wait(), timeout)
            return run.result(self.id)
        except TimeoutError:
            pass
        await kernel.interrupt()
        result_error: dict[str, Any] = {
            "ename": "TimeoutError",
            "evalue": f"the cell ran longer than {timeout:g} s and was interrupted",
            "traceback": [],
        }
        try:
            await asyncio.wait_for(run.done.wait(), interrupt_grace)
            result = run.result(self.id)
        except TimeoutError:
            await self._replace_now(TIMEOUT_RESTART_NOTICE)
            self._pending_notices.clear()
            result = run.result(self.id)
            result.kernel_restarted = True
            result.notices.append(TIMEOUT_RESTART_NOTICE)
            result_error["evalue"] += "; it did not stop, so its kernel was replaced (state lost)"
        result.status = ExecutionStatus.TIMEOUT
        result.error = result_error
        return result

    # -- kernel lifecycle --------------------------------------------------------------------------------

    async def interrupt(self) -> None:
        await self.kernel.interrupt()

    async def restart(self) -> None:
        """A fresh kernel for this session (from the warm pool), as a Jupyter restart asks."""
        await self._replace_now(None)

    def _start_replacement(self, notice: str | None) -> None:
        if self._replacing is None or self._replacing.done():
            self._replacing = asyncio.get_running_loop().create_task(self._replace_now(notice))

    async def _replace_now(self, notice: str | None) -> None:
        if not self._kernel_ready.is_set():
            await self._kernel_ready.wait()
            return
        self._kernel_ready.clear()
        self.state = SessionState.RESTARTING
        old = self.kernel
        old.listener = None
        if notice is not None:
            # Recorded before waking the aborted cell, which then reports the notice itself.
            self._pending_notices.append(notice)
        for msg_id, route in list(self._routes.items()):
            if isinstance(route, CellRun):
                route.abort()
            else:
                del self._routes[msg_id]
        self._broadcast_status(old, "restarting")
        asyncio.get_running_loop().create_task(old.shutdown(now=True))
        try:
            new = await self._acquire()
        except Exception:
            log.exception("session %s: no kernel to replace the old one", self.id)
            self._broadcast_status(old, "dead")
            self._set_execution_state("dead")
            raise
        finally:
            self._kernel_ready.set()
        if self.state is SessionState.CLOSED:
            await new.shutdown(now=True)
            return
        self.kernel = new
        new.listener = self
        self.kernel_restarts += 1
        self.execution_count = 0
        self.state = SessionState.ACTIVE
        self._broadcast_status(new, "starting")
        self._broadcast_status(new, "idle")

    def _set_execution_state(self, state: str) -> None:
        self.execution_state = state
        if state == "busy":
            self._idle.clear()
        else:
            self._idle.set()

    def _broadcast_status(self, kernel: Kernel, state: str) -> None:
        self._set_execution_state(state)
        msg = kernel.new_message(Channel.IOPUB, "status", {"execution_state": state})
        for conn in list(self.connections):
            conn.deliver(msg)

    async def close(self) -> None:
        """Shut the kernel down; attached frontends are told the kernel is dead."""
        if self.state is SessionState.CLOSED:
            return
        self.state = SessionState.CLOSED
        if self._replacing is not None:
            self._replacing.cancel()
        kernel = self.kernel
        kernel.listener = None
        for route in self._routes.values():
            if isinstance(route, CellRun):
                route.abort()
        self._routes.clear()
        self._broadcast_status(kernel, "dead")
        with contextlib.suppress(Exception):
            await kernel.shutdown(now=False)

    # -- views -------------------------------------------------------------------------------------------

    async def wait_idle(self) -> None:
        """Return once no cell of this session is running, from any frontend."""
        async with self.lock:
            await self._idle.wait()

    @property
    def busy(self) -> bool:
        return self.execution_state == "busy" or self.lock.locked()

    def model(self) -> JSONDict:
        """The kernel model of the Jupyter API."""
        return {
            "id": self.id,
            "name": self.kernel_name,
            "last_activity": _iso(self.last_activity),
            "execution_state": self.execution_state,
            "connections": len(self.connections),
        }

    def info(self) -> JSONDict:
        """The session as the REST face describes it."""
        return {
            "id": self.id,
            "kernel_name": self.kernel_name,
            "state": self.state.value,
            "execution_state": self.execution_state,
            "execution_count": self.execution_count,
            "created": _iso(self.created),
            "last_activity": _iso(self.last_activity),
            "connections": len(self.connections),
            "kernel_restarts": self.kernel_restarts,
            "kernel_alive": self.kernel.state is KernelState.READY,
        }


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e6):06d}Z"
