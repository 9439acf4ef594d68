"""Opening a session on this replica, once its lease is held: a kernel with the frontend's environment, the
session's persistence and, when it moves here, its last committed state restored, with what the next caller
must be told about what was not saved.

Which replica serves a session, and whether it may, is decided before (``manager.SessionManager``); this module
only puts a leased session on a kernel.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from notebook_state.checkpoint import Checkpointer
from notebook_state.persistence import Persistence
from notebook_state.signing import VerificationError
from notebook_state.store import SessionRecord, StoreUnavailable

from ..kernels.kernel import Kernel
from ..kernels.supply import KernelSupply
from ..types import ManagerSettings
from .errors import CheckpointRejected, Draining, StoreDown
from .lease import HeldLease
from .session import STATE_LOST_NOTICE, LeaseLostHook, Session

log = logging.getLogger(__name__)

Discard = Callable[[Session, bool], Awaitable[None]]
"""Stop serving a session that failed to open (True: release its lease, its state is intact)."""


def unsaved_cells_notice(record: SessionRecord) -> str | None:
    """Cells an earlier owner ran but never committed (it died or lost the store first), named for the next
    caller; None when every cell that ran was saved."""
    first, last = record.execution_count + 1, record.ran
    if last < first:
        return None
    cells = f"cell {first}" if first == last else f"cells {first}-{last}"
    return (
        f"{cells} ran on a replica that stopped before {'its checkpoint' if first == last else 'their checkpoints'} "
        f"committed: {'it was' if first == last else 'they were'} not saved; the session resumes from execution "
        f"count {record.execution_count}"
    )


class Opener:
    """Makes the ``Session`` of a leased record: kernel, environment, persistence, restored state."""

    def __init__(
        self,
        settings: ManagerSettings,
        supply: KernelSupply,
        checkpointer: Checkpointer,
        draining: Callable[[], bool],
        lease_lost: LeaseLostHook,
        discard: Discard,
    ) -> None:
        self.settings = settings
        self.supply = supply
        self.checkpointer = checkpointer
        self._draining = draining
        self._lease_lost = lease_lost
        self._discard = discard

    async def open(
        self, record: SessionRecord, lease: HeldLease, env: Mapping[str, str], restore: bool = False
    ) -> Session:
        name = record.kernel_name

        # Also how the session replaces its kernel later (a restart, a death): the same environment again.
        async def acquire() -> Kernel:
            kernel = await self.supply.kernel(name, env, restore)
            await self.supply.factory.apply_env(kernel, env, record.tenant)
            return kernel

        kernel = await acquire()
        if self._draining():
            await kernel.shutdown(now=True)
            raise Draining()
        persistence = (
            Persistence(self.checkpointer, record, lease.fence, may_commit=lease.valid)
            if self.settings.checkpoint and name == self.settings.kernel_name
            else None
        )
        session = Session(record.id, kernel, acquire, persistence, self.settings.ws_replay_bytes, lease=lease)
        session.created = record.created
        session.tenant = record.tenant
        session.on_lease_lost = self._lease_lost
        return session

    async def restored(self, record: SessionRecord, lease: HeldLease) -> Session:
        """The session on a kernel here, its last committed state loaded (a take-over, a cold start)."""
        sid = record.id
        session = await self.open(record, lease, record.env, restore=True)
        unsaved = unsaved_cells_notice(record)
        if unsaved is not None:
            log.warning("session %s: %s", sid, unsaved)
            session.add_notice(unsaved)
        if session.persistence is None and max(record.ran, record.execution_count) > 0:
            session.add_notice(STATE_LOST_NOTICE)
        if session.persistence is not None:
            try:
                report = await self.checkpointer.restore(sid, session.kernel, session.persistence.state)
            except VerificationError as exc:
                await self._discard(session, True)
                raise CheckpointRejected(f"{exc}; refusing to load it") from exc
            except StoreUnavailable as exc:
                await self._discard(session, False)
                raise StoreDown(f"state store unreachable: {exc}") from exc
            except Exception:
                await self._discard(session, True)
                raise
            if report is not None:
                session.set_restored(report)
                log.info(
                    "session %s restored at execution count %d (%d restored, %d lost) in %.3f s",
                    sid, report.execution_count, len(report.restored), len(report.lost), report.seconds,
                )  # fmt: skip
        return session
