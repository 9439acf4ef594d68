"""A session: one notebook's kernel, its cells one at a time with a checkpoint after each, and its kernel
replaced (restart, death) without its frontends noticing more than a restart. Who gets each of the kernel's
messages is ``frontends.Frontends``."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import Any

import orjson

from notebook_state.checkpoint import CheckpointOutcome, CheckpointStatus, RestoreReport
from notebook_state.errors import LeaseLost
from notebook_state.persistence import Persistence
from notebook_state.types import REPLY_KEY

from ..kernels.kernel import Kernel, KernelState
from ..types import Channel, JSONDict, KernelMessage, Subscriber
from .acks import AckGate
from .cells import CellQueue
from .errors import LeaseUncertain
from .frontends import Frontends
from .lease import HeldLease

log = logging.getLogger(__name__)

KernelSource = Callable[[], Awaitable[Kernel]]

NO_REPLY = frozenset({"comm_open", "comm_msg", "comm_close"})
"""Shell requests the kernel never replies to: routing them would only grow the route table."""

STATE_LOST_NOTICE = "the session's variables were lost (no checkpoint to restore)"
KERNEL_DIED_NOTICE = "the kernel process exited; the session continues on a fresh kernel"
CLOSE_SESSION_MOVED = 1012  # "service restart": reconnect, and land on the session's current owner
CLOSE_TRY_AGAIN = 1013
LeaseLostHook = Callable[["Session"], Coroutine[Any, Any, None]]


class SessionState(enum.Enum):
    ACTIVE = "active"
    RESTARTING = "restarting"
    CLOSED = "closed"


class Session:
    """One notebook's kernel: runs cells one at a time, checkpoints after each, hands every message to its
    frontends (``frontends``), and replaces the kernel when asked or when it dies."""

    def __init__(
        self,
        session_id: str,
        kernel: Kernel,
        acquire: KernelSource,
        persistence: Persistence | None = None,
        replay_bytes: int = 8 * 1024 * 1024,
        lease: HeldLease | None = None,
    ) -> None:
        self.id = session_id
        self.kernel = kernel
        self.kernel_name = kernel.name
        self.persistence = persistence
        self.lease = lease
        self.on_lease_lost: LeaseLostHook | None = None
        self.state = SessionState.ACTIVE
        self.execution_state = "idle"
        self.execution_count = 0
        self.created = time.time()
        self.tenant = ""  # whose session this is (kernel_gateway.tenants); for other tenants it does not exist
        self.last_activity = self.created
        self.kernel_restarts = 0
        self.restored: RestoreReport | None = None
        self.lock = asyncio.Lock()
        self.frontends = Frontends(replay_bytes)
        self._acquire = acquire
        self._kernel_ready = asyncio.Event()
        self._kernel_ready.set()
        self._pending_notices: list[str] = []
        self._unreported_restore: RestoreReport | None = None
        self._replacing: asyncio.Task[None] | None = None
        self.acks = AckGate(self.frontends.dispatch)
        self.cells = CellQueue(
            self._send_cell, self._reply, self._after_cell if persistence else None, may_run=self.refusal
        )
        kernel.listener = self

    # -- kernel events -----------------------------------------------------------------------------------

    def on_kernel_message(self, msg: KernelMessage) -> None:
        self.last_activity = time.time()
        if msg.channel is Channel.SHELL and msg.msg_type == "execute_reply":
            self._take_checkpoint(msg)
        self.cells.observe(msg)
        if msg.channel is Channel.IOPUB:
            if msg.msg_type == "status":
                self.execution_state = str(msg.content.get("execution_state", self.execution_state))
            elif msg.msg_type == "execute_input":
                count = msg.content.get("execution_count")
                if isinstance(count, int):
                    self.execution_count = count
        if self.acks.hold(msg):
            return
        self.frontends.dispatch(msg)

    def _take_checkpoint(self, msg: KernelMessage) -> None:
        """A cell's small checkpoint rides in its execute_reply (``capture.outbox``): out of the reply before
        any frontend sees it, and to this session's persistence; None there when the reply had none."""
        # Metadata that is not an object is not what ipykernel sends: no hand-over (a full checkpoint is taken),
        # and the reply goes out as it came.
        found = msg.metadata.pop(REPLY_KEY, None) if isinstance(msg.metadata, dict) else None
        if found is not None and msg.raw is not None:
            msg.raw = [msg.raw[0], msg.raw[1], orjson.dumps(msg.metadata), msg.raw[3]]
        if self.persistence is not None:
            self.persistence.offer(found)

    def on_kernel_died(self, kernel_id: str) -> None:
        if kernel_id != self.kernel.id or self.state is SessionState.CLOSED:
            return
        log.warning("session %s: kernel %s died", self.id, kernel_id)
        if self._replacing is None or self._replacing.done():
            notice = self.kernel.death_notice() or KERNEL_DIED_NOTICE
            self._replacing = asyncio.get_running_loop().create_task(self._replace_now(notice))

    # -- frontends ---------------------------------------------------------------------------------------

    @property
    def connections(self) -> set[Subscriber]:
        """The attached WebSockets."""
        return self.frontends.connections

    def attach(self, conn: Subscriber, client_session: str | None = None) -> None:
        """A frontend connects (``Frontends.attach``: a reconnect of the same client session resumes)."""
        self.frontends.attach(conn, client_session)

    def detach(self, conn: Subscriber, client_session: str | None = None) -> None:
        """A frontend leaves; what it is owed is kept for its reconnect while the session goes on."""
        self.frontends.detach(conn, client_session, keep=self.state is not SessionState.CLOSED)

    async def submit(self, conn: Subscriber, msg: KernelMessage) -> None:
        """Send a frontend's message to the kernel, remembering who should get the reply."""
        self.last_activity = time.time()
        await self._kernel_ready.wait()
        refused = self.refusal() if msg.channel is Channel.SHELL else None
        if refused is not None:
            # Shell messages change the kernel (comms run code); none enters while the lease is uncertain.
            _close(conn, CLOSE_TRY_AGAIN, str(refused))
            return
        if msg.channel is not Channel.STDIN and msg.msg_id and msg.msg_type not in NO_REPLY:
            self.frontends.expect_reply(msg.msg_id, conn)
        if msg.channel is Channel.SHELL and msg.msg_type == "execute_request":
            done = self.cells.submit(conn, msg)
            if self.persistence is not None:
                self.acks.watch(msg.msg_id)
            done.add_done_callback(partial(self._settle, conn, msg.msg_id))
        else:
            self.kernel.send(msg)

    def refusal(self) -> LeaseUncertain | None:
        """Why no cell may enter the kernel now, if one may not: the lease is no longer certainly valid."""
        if self.lease is not None and not self.lease.valid():
            return LeaseUncertain(self.id)
        return None

    def _settle(self, conn: Subscriber, msg_id: str, done: asyncio.Future[Any]) -> None:
        """A WebSocket cell's after-cell step ended: acknowledge it, or say why it never will be."""
        if done.cancelled():
            self.acks.drop(msg_id)
            return
        exc = done.exception()
        if exc is None:
            result = done.result()
            self.acks.settle(msg_id, result if isinstance(result, CheckpointOutcome) else None)
        elif isinstance(exc, LeaseUncertain):
            self.acks.drop(msg_id)
            _close(conn, CLOSE_TRY_AGAIN, str(exc))
        elif isinstance(exc, LeaseLost):
            self.acks.drop(msg_id)  # the session closes here (1012); its new owner has the committed state
        else:
            self.acks.settle(msg_id, CheckpointOutcome(CheckpointStatus.FAILED, error=str(exc)))

    def checkpoint_landed(self) -> None:
        """A pending checkpoint committed (retried by the lease keeper): release what it acknowledges."""
        self.acks.landed()

    def _send_cell(self, msg: KernelMessage) -> None:
        self.kernel.send(msg)

    def _reply(self, route: Subscriber, msg: KernelMessage) -> None:
        """Answer a held cell without running it (aborted), with the busy/idle pair ipykernel would send."""
        self.frontends.routes.pop(msg.parent_id, None)
        for state in ("busy", None, "idle"):
            if state is None:
                route.deliver(msg)
                continue
            status = self.status_message(state)
            status.parent_header = msg.parent_header
            self.frontends.iopub_for(route, status)

    async def _after_cell(self) -> CheckpointOutcome | None:
        if self.persistence is None:
            return None
        kernel = self.kernel
        if kernel.state is not KernelState.READY:
            return None
        try:
            return await self.persistence.after_cell(kernel)
        except LeaseLost:
            log.warning("session %s: lease lost; this replica stops serving it", self.id)
            if self.on_lease_lost is not None:
                asyncio.get_running_loop().create_task(self.on_lease_lost(self))
            raise

    # -- for REST cells (kernel_gateway.sessions.rest_cell) ---------------------------------------------

    def route(self, msg_id: str, subscriber: Subscriber) -> None:
        self.frontends.routes[msg_id] = subscriber

    def unroute(self, msg_id: str) -> None:
        self.frontends.routes.pop(msg_id, None)

    async def kernel_ready(self) -> None:
        await self._kernel_ready.wait()

    def take_notices(self) -> list[str]:
        """What the next REST reply must tell its client (kernel deaths, restores), once."""
        taken, self._pending_notices = self._pending_notices, []
        return taken

    def add_notice(self, notice: str) -> None:
        self._pending_notices.append(notice)

    def discard_notice(self, notice: str) -> None:
        self._pending_notices = [n for n in self._pending_notices if n != notice]

    def take_restore(self) -> RestoreReport | None:
        restored, self._unreported_restore = self._unreported_restore, None
        return restored

    async def replace_kernel(self, notice: str | None) -> None:
        await self._replace_now(notice)

    # -- kernel lifecycle --------------------------------------------------------------------------------

    async def interrupt(self) -> None:
        await self.kernel.interrupt()

    async def restart(self) -> None:
        """A fresh kernel for this session (from the warm pool), as a Jupyter restart asks."""
        await self._replace_now(None)

    async def _replace_now(self, notice: str | None) -> None:
        if not self._kernel_ready.is_set():
            await self._kernel_ready.wait()
            return
        # Nothing reaches the session's kernel until the new one is in place (and restored, if it must be).
        self._kernel_ready.clear()
        try:
            await self._swap_kernel(notice)
        finally:
            self._kernel_ready.set()

    async def _swap_kernel(self, notice: str | None) -> None:
        self.state = SessionState.RESTARTING
        old = self.kernel
        old.listener = None
        if notice is not None:
            # Recorded before waking the aborted cell, which then reports the notice itself.
            self._pending_notices.append(notice)
        self.frontends.kernel_replaced()
        self.cells.reset()
        if notice is not None:
            # Only for a kernel that died or hung: JupyterLab takes an iopub "restarting" for the server's
            # auto-restart ("the kernel appears to have died") and reconnects, as jupyter_server's restarter
            # sends it; a restart the user asked for only shows starting, then idle.
            self.broadcast_status("restarting")
        asyncio.get_running_loop().create_task(old.shutdown(now=True))
        if self.persistence is not None:
            self.persistence.forget(old)
        try:
            new = await self._acquire()
        except Exception:
            log.exception("session %s: no kernel to replace the old one", self.id)
            self.broadcast_status("dead")
            raise
        if self.state is SessionState.CLOSED:
            await new.shutdown(now=True)
            return
        self.kernel = new
        new.listener = self
        self.kernel_restarts += 1
        self.execution_count = 0
        self.state = SessionState.ACTIVE
        self.broadcast_status("starting")
        extra: JSONDict | None = None
        if notice is not None:
            # The kernel died or hung, not a restart the user asked for: bring back the last committed state.
            report = None
            if self.persistence is not None:
                try:
                    report = await self.persistence.restore(new)
                except Exception as exc:
                    log.warning("session %s: could not restore onto the new kernel: %s", self.id, exc)
            if report is not None:
                self.set_restored(report)
                self._pending_notices.append(
                    "the session was restored from its last committed checkpoint "
                    f"(execution count {report.execution_count})"
                )
                extra = {"restored": report.to_json()}
            else:
                self._pending_notices.append(STATE_LOST_NOTICE)
        self.broadcast_status("idle", extra)

    def set_restored(self, report: RestoreReport) -> None:
        """The session was just restored onto this replica: tell the next REST reply and every WebSocket."""
        self.restored = report
        self._unreported_restore = report
        self.execution_count = report.execution_count

    def broadcast_status(self, state: str, extra: JSONDict | None = None) -> None:
        self.execution_state = state
        self.frontends.broadcast(self.status_message(state, extra))

    def status_message(self, state: str, extra: JSONDict | None = None) -> KernelMessage:
        return self.kernel.new_message(Channel.IOPUB, "status", {"execution_state": state, **(extra or {})})

    async def close(self, dead: bool = True, reason: str = "session moved", graceful: bool | None = None) -> list[str]:
        """Shut the kernel down; attached frontends are told the kernel is dead (or just disconnected, with
        ``reason``). The kernel is asked to exit when it is dead to its frontends, killed when it moves on
        (``graceful`` decides otherwise). Returns the WebSocket cells that ran but were never acknowledged."""
        if self.state is SessionState.CLOSED:
            return []
        self.state = SessionState.CLOSED
        # Before the queue's reset settles the cells: what was held must not go out now.
        unacknowledged = self.acks.clear()
        if self._replacing is not None:
            self._replacing.cancel()
        kernel = self.kernel
        kernel.listener = None
        self.frontends.close()
        self.cells.reset()
        if dead:
            self.broadcast_status("dead")
        for conn in list(self.connections):
            _close(conn, 1000 if dead else CLOSE_SESSION_MOVED, "kernel shut down" if dead else reason)
        with contextlib.suppress(Exception):
            await kernel.shutdown(now=not (dead if graceful is None else graceful))
        if self.persistence is not None:
            self.persistence.forget(kernel)
        return unacknowledged

    # -- state -------------------------------------------------------------------------------------------

    async def wait_idle(self) -> None:
        """Return once no cell of this session is running or waiting, from any frontend."""
        async with self.lock:
            await self.cells.drained()

    @property
    def busy(self) -> bool:
        return self.execution_state == "busy" or self.lock.locked() or self.cells.busy


def _close(conn: Subscriber, code: int, reason: str) -> None:
    close = getattr(conn, "close_soon", None)
    if close is not None:
        close(code, reason[:120])  # a close reason is at most 123 bytes
