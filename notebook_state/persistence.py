"""One session's link to the state store: its lease epoch, and the checkpoint after every cell."""

from __future__ import annotations

import logging

from .checkpoint import Checkpointer, CheckpointOutcome, CheckpointStatus, MayCommit, RestoreReport, SessionCheckpoints
from .errors import LeaseLost
from .store import Fence, SessionRecord, StaleEpoch
from .types import KernelLink

log = logging.getLogger(__name__)


class Persistence:
    def __init__(
        self, checkpointer: Checkpointer, record: SessionRecord, fence: Fence, may_commit: MayCommit | None = None
    ) -> None:
        self.checkpointer = checkpointer
        self.record = record
        self.fence = fence
        self.may_commit = may_commit  # the lease is still certainly valid: commits are sent only then
        self.state = SessionCheckpoints()
        self.lost = False

    @property
    def session_id(self) -> str:
        return self.record.id

    @property
    def pending(self) -> bool:
        return self.state.pending is not None

    @property
    def last(self) -> CheckpointOutcome | None:
        return self.state.last

    def offer(self, found: object | None) -> None:
        """What the last cell's execute_reply carried under ``types.REPLY_KEY`` (None: nothing): its checkpoint,
        taken by the next ``after_cell`` instead of a hand-over directory."""
        self.state.offer(found)

    async def after_cell(self, kernel: KernelLink) -> CheckpointOutcome:
        """Capture what the cell changed and commit it; LeaseLost if another replica owns the session now."""
        if self.lost:
            raise LeaseLost(self.session_id, cell=self.lost_cell)
        try:
            return await self.checkpointer.capture(
                self.session_id, kernel, self.fence, self.state, self.record, self.may_commit
            )
        except StaleEpoch as exc:
            self.lost = True
            raise LeaseLost(self.session_id, cell=self.lost_cell) from exc

    @property
    def lost_cell(self) -> str:
        """What became of a cell that ran here once the lease was lost: a commit sent earlier whose answer was
        lost may have landed before the new owner took over (and resumed from it), so sending the cell again
        could run it twice."""
        return "unknown" if self.state.uncertain else "not saved"

    async def restore(self, kernel: KernelLink) -> RestoreReport | None:
        """Load the last committed checkpoint into a fresh kernel of this session."""
        return await self.checkpointer.restore(self.session_id, kernel, self.state)

    def forget(self, kernel: KernelLink) -> None:
        """The kernel is gone: drop whatever checkpoints it left in its hand-over directory."""
        self.checkpointer.forget(kernel)

    async def flush(self) -> bool:
        """Retry a pending commit; True once nothing is pending."""
        if self.lost:
            return False
        try:
            return await self.checkpointer.flush(self.session_id, self.fence, self.state, self.may_commit)
        except StaleEpoch:
            self.lost = True
            return False

    def describe(self) -> dict[str, object]:
        last = self.state.last
        return {
            "status": (CheckpointStatus.PENDING if self.pending else last.status).value if last else None,
            "epoch": self.fence.epoch,
        }
