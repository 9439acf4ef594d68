"""The background work of a replica: keeping its leases (and flushing pending checkpoints), evicting idle
sessions to the store.

Each loop is handed exactly what it uses (the live sessions, the store, callbacks into the manager), so this
module depends on sessions and the store, never on the manager that starts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from notebook_state.store import StateStore, StoreUnavailable

from .session import Session

log = logging.getLogger(__name__)

Drop = Callable[[Session], Awaitable[None]]
Evict = Callable[[Session], Awaitable[bool]]


@dataclass
class LeaseKeeper:
    """Renews every lease this replica holds every ``lease_ttl / 3``; drops sessions whose lease was lost."""

    sessions: Mapping[str, Session]
    store: StateStore
    replica_id: str
    url: Callable[[], str]
    lease_ttl: float
    lost: Drop

    async def run(self) -> None:
        interval = max(self.lease_ttl / 3, 0.2)
        while True:
            await asyncio.sleep(interval)
            await self.renew_all()

    async def renew_all(self) -> None:
        for session in list(self.sessions.values()):
            persistence = session.persistence
            if persistence is None:
                continue
            try:
                ok = await self.store.renew(session.id, self.replica_id, self.url(), persistence.epoch, self.lease_ttl)
                if ok and persistence.pending:
                    ok = await persistence.flush() or not persistence.lost
            except StoreUnavailable:
                continue  # keep serving what we own; commits stay pending until the store is back
            if not ok:
                log.warning("session %s: lease lost to another replica; dropping it here", session.id)
                persistence.lost = True
                await self.lost(session)


async def evict_idle(sessions: Mapping[str, Session], after: float, evict: Evict) -> None:
    """Evict sessions idle for ``after`` seconds: their kernels go, their state stays stored."""
    interval = min(max(after / 4, 0.5), 30.0)
    while True:
        await asyncio.sleep(interval)
        now = time.time()
        for session in list(sessions.values()):
            if now - session.last_activity >= after:
                with contextlib.suppress(Exception):
                    await evict(session)
