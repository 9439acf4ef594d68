"""The background work of a replica: keeping its leases (and flushing pending checkpoints), evicting idle
sessions to the store; and the supervisor that keeps each of them running.

Each loop is handed exactly what it uses (the live sessions, the store, callbacks into the manager), so this
module depends on sessions and the store, never on the manager that starts it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from notebook_state.store import Renewal, StateStore, StoreUnavailable

from .lease import HeldLease, now
from .session import Session

log = logging.getLogger(__name__)

Drop = Callable[[Session], Awaitable[None]]


def stop_asked() -> bool:
    """This task was cancelled, even if the cancel was swallowed on the way: Python 3.11's ``asyncio.wait_for``
    (in jupyter_client's kernel kill, among others) returns a step that finished in the cancel's turn instead
    of raising, and a loop that went on would hold the replica's shutdown, which waits for it, for ever."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def supervise(name: str, run: Callable[[], Awaitable[None]], backoff: float = 1.0) -> None:
    """Run a replica's background loop for as long as the replica lives: a loop that fails (or returns) is
    logged and started again, so that one exception never silently stops lease renewal."""
    while not stop_asked():
        try:
            await run()
            if stop_asked():
                return
            log.error("background task %s stopped; restarting it", name)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background task %s failed; restarting it in %.1f s", name, backoff)
        await asyncio.sleep(backoff)


@dataclass
class LeaseKeeper:
    """Renews every lease this replica holds, all in one round trip every ``lease_ttl / 3``; drops a session
    the moment its lease may have lapsed unrenewed (``lapsed``), or when it was lost to another replica."""

    sessions: Mapping[str, Session]
    opening: Mapping[str, HeldLease]  # sessions being opened or restored: renewed, not yet served
    store: StateStore
    replica_id: str
    url: Callable[[], str]
    lease_ttl: float
    lost: Drop
    lapsed: Drop

    async def run(self) -> None:
        interval = max(self.lease_ttl / 3, 0.2)
        next_round = now() + interval
        renewing: asyncio.Task[None] | None = None
        try:
            while not stop_asked():
                # Wake for the next round, or earlier when a lease would lapse before it: a running cell must
                # stop when its lease may have lapsed, not up to a round later, even while a renewal hangs.
                deadlines = [s.lease.valid_until for s in self._held() if s.lease is not None]
                await asyncio.sleep(max(min([next_round, *deadlines]) - now(), 0.01))
                if now() >= next_round and (renewing is None or renewing.done()):
                    next_round = now() + interval
                    if renewing is not None and not renewing.cancelled() and renewing.exception() is not None:
                        raise renewing.exception()  # type: ignore[misc]
                    renewing = asyncio.ensure_future(self.renew_all())
                await self.drop_lapsed()
        finally:
            if renewing is not None:
                renewing.cancel()

    def _held(self) -> list[Session]:
        return [s for s in self.sessions.values() if s.lease is not None and not s.lease.lost]

    async def renew_all(self) -> None:
        held = self._held()
        opening = [(sid, lease) for sid, lease in self.opening.items() if not lease.lost]
        if not held and not opening:
            return
        sent = now()
        url = self.url()
        renewals = [
            Renewal(s.id, self.replica_id, url, s.lease.fence, s.execution_count) for s in held if s.lease is not None
        ] + [Renewal(sid, self.replica_id, url, lease.fence) for sid, lease in opening]
        try:
            results = await self.store.renew_many(renewals, self.lease_ttl)
        except StoreUnavailable as exc:
            log.warning("lease renewal failed, the store is unreachable (%d sessions): %s", len(renewals), exc)
            return
        for (_, lease), ok in zip(opening, results[len(held) :], strict=True):
            if ok is True:
                lease.renewed(sent)
            elif ok is False:
                lease.lost = True  # the opener sees it and gives the session up
        flushes = []
        for session, ok in zip(held, results, strict=False):
            assert session.lease is not None
            if ok is True:
                session.lease.renewed(sent)
                if session.persistence is not None and session.persistence.pending:
                    flushes.append(self._flush(session))
            elif ok is False:
                log.warning("session %s: lease lost to another replica; dropping it here", session.id)
                session.lease.lost = True
                if session.persistence is not None:
                    session.persistence.lost = True
                await self.lost(session)
        await asyncio.gather(*flushes)

    async def _flush(self, session: Session) -> None:
        persistence = session.persistence
        assert persistence is not None
        try:
            if await persistence.flush():
                session.checkpoint_landed()
        except StoreUnavailable:
            return
        if persistence.lost:
            await self.lost(session)

    async def drop_lapsed(self) -> None:
        """A lease that may have lapsed unrenewed: another replica may take the session any moment, so this one
        stops at once; its kernel (and whatever ran uncommitted) goes, the committed state stays stored."""
        for session in self._held():
            if session.lease is not None and not session.lease.valid():
                persistence = session.persistence
                unsaved = session.execution_count - (persistence.state.committed_count if persistence else 0)
                log.warning(
                    "session %s: lease may have lapsed (the store did not confirm it in time); dropped here%s",
                    session.id, f", {unsaved} cells not saved" if persistence is not None and unsaved > 0 else "",
                )  # fmt: skip
                await self.lapsed(session)


async def evict(session: Session, release: Drop) -> bool:
    """Free an idle session's kernel (``release``: its lease released, its kernel shut down); its committed
    checkpoint is restored on next use. A session with nothing committed, or still in use, stays."""
    if session.persistence is None or session.busy or session.connections:
        return False
    if not await session.persistence.flush():
        return False
    await release(session)
    log.info("session %s evicted to the store", session.id)
    return True


async def evict_idle(sessions: Mapping[str, Session], after: float, release: Drop) -> None:
    """Evict sessions idle for ``after`` seconds: their kernels go, their state stays stored."""
    interval = min(max(after / 4, 0.5), 30.0)
    while not stop_asked():
        await asyncio.sleep(interval)
        now_wall = time.time()
        for session in list(sessions.values()):
            if stop_asked():
                return
            if now_wall - session.last_activity >= after:
                try:
                    await evict(session, release)
                except StoreUnavailable:
                    continue
                except Exception:
                    log.exception("session %s: eviction failed", session.id)
