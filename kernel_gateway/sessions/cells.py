"""One cell at a time into the kernel, so that each cell's checkpoint commits before the next cell starts.

Frontends may send several ``execute_request``s at once (JupyterLab's "Run All"). The kernel would queue
them itself, but then a checkpoint asked for after cell 1 would run after cell 2. So the session holds them
here and lets the next one in only once the previous cell is over and its checkpoint committed. When a cell
fails and the next held request asked ``stop_on_error``, it is answered ``aborted``, as ipykernel would.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..types import Channel, KernelMessage, Subscriber

log = logging.getLogger(__name__)

AfterCell = Callable[[], Awaitable[Any]]
Send = Callable[[KernelMessage], None]
Reply = Callable[[Subscriber, KernelMessage], None]
MayRun = Callable[[], BaseException | None]
"""None when a cell may enter the kernel now; else why not (the cell fails with it, unsent)."""


@dataclass
class _Cell:
    route: Subscriber
    msg: KernelMessage
    done: asyncio.Future[Any] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    replied: bool = False
    idle: bool = False
    failed: bool = False


class CellQueue:
    def __init__(self, send: Send, reply: Reply, after_cell: AfterCell | None, may_run: MayRun | None = None) -> None:
        self._send = send
        self._reply = reply
        self._after_cell = after_cell
        self._may_run = may_run
        self._held: deque[_Cell] = deque()
        self._current: _Cell | None = None
        self._finishing: asyncio.Task[None] | None = None
        self._abortable: list[_Cell] = []

    @property
    def busy(self) -> bool:
        return self._current is not None or bool(self._held)

    def submit(self, route: Subscriber, msg: KernelMessage) -> asyncio.Future[Any]:
        """Queue an execute_request; the future resolves with the cell's after-cell result (its checkpoint)."""
        cell = _Cell(route, msg)
        self._held.append(cell)
        self._next()
        return cell.done

    def _next(self) -> None:
        if self._current is not None or self._finishing is not None or not self._held:
            return
        cell = self._held.popleft()
        refusal = self._may_run() if self._may_run is not None else None
        if refusal is not None:
            # Checked as the cell enters the kernel, not when it was queued: the lease may have lapsed since.
            if not cell.done.done():
                cell.done.set_exception(refusal)
            self._next()
            return
        self._current = cell
        try:
            self._send(cell.msg)
        except Exception as exc:
            self._current = None
            if not cell.done.done():
                cell.done.set_exception(exc)
            self._next()

    def observe(self, msg: KernelMessage) -> None:
        """Watch the kernel's messages for the end of the current cell."""
        cell = self._current
        if cell is None or msg.parent_id != cell.msg.msg_id:
            return
        if msg.channel is Channel.SHELL and msg.msg_type == "execute_reply":
            cell.replied = True
            cell.failed = msg.content.get("status") != "ok"
            if cell.failed:
                # Only what was already waiting when the error was reported would have been in the kernel's
                # queue; requests sent after the frontend saw the error run normally.
                self._abortable = list(self._held)
        elif msg.channel is Channel.IOPUB and msg.msg_type == "status":
            cell.idle = msg.content.get("execution_state") == "idle"
        if cell.replied and cell.idle:
            self._current = None
            self._finishing = asyncio.get_running_loop().create_task(self._finish(cell))

    async def _finish(self, cell: _Cell) -> None:
        try:
            result = await self._after_cell() if self._after_cell is not None else None
            if not cell.done.done():
                cell.done.set_result(result)
        except Exception as exc:
            log.warning("after-cell step failed: %s", exc)
            if not cell.done.done():
                cell.done.set_exception(exc)
        finally:
            self._finishing = None
        if cell.failed:
            self._abort_held(stop_on_error_only=True, only=self._abortable)
        self._abortable = []
        self._next()

    def _abort_held(self, stop_on_error_only: bool, only: list[_Cell] | None = None) -> None:
        kept: deque[_Cell] = deque()
        while self._held:
            cell = self._held.popleft()
            spared = only is not None and all(cell is not c for c in only)
            if spared or (stop_on_error_only and not cell.msg.content.get("stop_on_error", True)):
                kept.append(cell)
                continue
            reply = KernelMessage(
                Channel.SHELL,
                {**cell.msg.header, "msg_id": cell.msg.msg_id + "-aborted", "msg_type": "execute_reply"},
                cell.msg.header,
                {"status": "aborted"},
                {"status": "aborted"},
            )
            self._reply(cell.route, reply)
            if not cell.done.done():
                cell.done.set_result(None)
        self._held = kept

    def reset(self) -> None:
        """The kernel was replaced: the cell in it is gone, and held cells are aborted as a restart would."""
        current, self._current = self._current, None
        if current is not None and not current.done.done():
            current.done.set_result(None)
        self._abort_held(stop_on_error_only=False)

    async def drained(self) -> None:
        """Return once no cell is running or held and the last after-cell step finished."""
        while self._current is not None or self._held or self._finishing is not None:
            pending = [c.done for c in (self._current, *self._held) if c is not None]
            if self._finishing is not None:
                pending.append(self._finishing)
            await asyncio.wait(pending)
