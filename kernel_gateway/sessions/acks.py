"""The WebSocket's acknowledgement of a cell is its ``execute_reply``: held here until the cell's checkpoint
committed, so that a frontend never sees a cell as done that a crash right after could lose.

Outputs flow as they happen; only the reply and the cell's closing ``status: idle`` wait. What a cell's
after-cell step ends with decides what the frontend gets:

- committed: everything held so far goes out, in the order it arrived (a commit covers all earlier cells);
- pending (the store is unreachable): the cell stays held until a later flush commits it. If the lease lapses
  first, the WebSocket is closed with a reason and the reply is never sent: the cell was not acknowledged;
- failed (the kernel could not produce a checkpoint): the reply goes out rewritten as an error
  (``CheckpointFailed``), so the frontend does not count the cell as saved;
- the lease was lost to another replica: nothing goes out; the session closes here (1012, reconnect).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from notebook_state.checkpoint import CheckpointOutcome, CheckpointStatus

from ..types import Channel, KernelMessage

Dispatch = Callable[[KernelMessage], None]

CHECKPOINT_FAILED = "CheckpointFailed"


def closes_cell(msg: KernelMessage) -> bool:
    """The messages that tell a frontend its cell is over."""
    if msg.channel is Channel.SHELL:
        return msg.msg_type == "execute_reply"
    return msg.channel is Channel.IOPUB and msg.msg_type == "status" and msg.content.get("execution_state") == "idle"


def failed_reply(msg: KernelMessage, reason: str) -> KernelMessage:
    """The execute_reply of a cell whose checkpoint failed: an error the frontend shows, in place of ok."""
    if msg.channel is not Channel.SHELL or msg.content.get("status") != "ok":
        return msg
    content = {
        **msg.content,
        "status": "error",
        "ename": CHECKPOINT_FAILED,
        "evalue": reason,
        "traceback": [f"{CHECKPOINT_FAILED}: {reason}"],
    }
    return replace(msg, content=content, raw=None)


class AckGate:
    def __init__(self, dispatch: Dispatch) -> None:
        self._dispatch = dispatch
        self._held: dict[str, list[KernelMessage]] = {}
        self._pending: list[str] = []  # cells whose checkpoint is captured but not committed, oldest first

    def watch(self, msg_id: str) -> None:
        """A WebSocket cell entered the queue: its acknowledgement waits for its commit."""
        self._held.setdefault(msg_id, [])

    def hold(self, msg: KernelMessage) -> bool:
        """Keep ``msg`` back if it would acknowledge a watched cell; True if it was kept."""
        held = self._held.get(msg.parent_id)
        if held is None or not closes_cell(msg):
            return False
        held.append(msg)
        return True

    @property
    def waiting(self) -> int:
        """Cells whose acknowledgement is held."""
        return len(self._held)

    def settle(self, msg_id: str, outcome: CheckpointOutcome | None) -> None:
        """The cell's after-cell step ended with ``outcome`` (None: nothing to commit, e.g. an aborted cell)."""
        if msg_id not in self._held:
            return
        status = outcome.status if outcome is not None else None
        if status is CheckpointStatus.COMMITTED:
            self._pending.append(msg_id)
            self.landed()
        elif status is CheckpointStatus.PENDING:
            self._pending.append(msg_id)
        elif status is CheckpointStatus.FAILED and outcome is not None:
            reason = f"the cell ran, but its checkpoint failed: {outcome.error or 'unknown error'}"
            for msg in self._held.pop(msg_id):
                self._dispatch(failed_reply(msg, reason))
        else:
            self._release(msg_id)

    def landed(self) -> None:
        """A commit landed: every cell captured before it is saved, so their acknowledgements go out."""
        pending, self._pending = self._pending, []
        for msg_id in pending:
            self._release(msg_id)

    def drop(self, msg_id: str) -> None:
        """The cell will never be acknowledged (its commit was fenced off, or it never ran)."""
        self._held.pop(msg_id, None)
        if msg_id in self._pending:
            self._pending.remove(msg_id)

    def clear(self) -> list[str]:
        """The session stops here: forget everything held; the cells that were never acknowledged."""
        unacknowledged = list(self._held)
        self._held.clear()
        self._pending.clear()
        return unacknowledged

    def _release(self, msg_id: str) -> None:
        for msg in self._held.pop(msg_id, []):
            self._dispatch(msg)
