"""One REST cell run: the subscriber that gathers a cell's outputs and knows when the cell is over."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from ..types import Channel, JSONDict, KernelMessage
from .outputs import OutputCollector

OutputCallback = Callable[[JSONDict], None]


class ExecutionStatus(enum.StrEnum):
    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"


@dataclass(slots=True)
class ExecutionResult:
    session: str
    status: ExecutionStatus
    execution_count: int | None
    outputs: list[JSONDict]
    error: JSONDict | None = None
    truncated: bool = False
    kernel_restarted: bool = False
    notices: list[str] = field(default_factory=list)
    checkpoint: JSONDict | None = None
    restored: JSONDict | None = None

    def to_json(self) -> JSONDict:
        return {
            "session": self.session,
            "status": self.status.value,
            "execution_count": self.execution_count,
            "outputs": self.outputs,
            "error": self.error,
            "truncated": self.truncated,
            "kernel_restarted": self.kernel_restarted,
            "notices": self.notices,
            "checkpoint": self.checkpoint,
            "restored": self.restored,
        }


class CellRun:
    """Collects the iopub outputs and the shell reply of one ``execute_request``.

    The cell is over when both its ``execute_reply`` and its ``status: idle`` have arrived: outputs can
    follow the reply on iopub, so the reply alone is not the end.
    """

    def __init__(self, output_limit: int, on_output: OutputCallback | None = None) -> None:
        self.collector = OutputCollector(output_limit)
        self.on_output = on_output
        self.reply: JSONDict | None = None
        self.idle = False
        self.kernel_died = False
        self.done = asyncio.Event()

    def deliver(self, msg: KernelMessage) -> None:
        if msg.channel is Channel.IOPUB:
            if msg.msg_type == "status":
                if msg.content.get("execution_state") == "idle":
                    self.idle = True
            else:
                output = self.collector.add(msg)
                if output is not None and self.on_output is not None:
                    self.on_output(output)
        elif msg.channel is Channel.SHELL and msg.msg_type == "execute_reply":
            self.reply = msg.content
        if self.reply is not None and self.idle:
            self.done.set()

    def abort(self) -> None:
        """The kernel went away: stop waiting."""
        self.kernel_died = True
        self.done.set()

    @property
    def execution_count(self) -> int | None:
        if self.reply is None:
            return None
        count = self.reply.get("execution_count")
        return count if isinstance(count, int) else None

    def result(self, session_id: str) -> ExecutionResult:
        reply = self.reply or {}
        ok = reply.get("status") == "ok"
        error = None
        if not ok and reply:
            error = {
                "ename": reply.get("ename", ""),
                "evalue": reply.get("evalue", ""),
                "traceback": reply.get("traceback", []),
            }
            if reply.get("status") == "aborted":
                error = {"ename": "Aborted", "evalue": "the kernel aborted this cell", "traceback": []}
        return ExecutionResult(
            session=session_id,
            status=ExecutionStatus.OK if ok else ExecutionStatus.ERROR,
            execution_count=self.execution_count,
            outputs=self.collector.outputs,
            error=error,
            truncated=self.collector.truncated,
        )
