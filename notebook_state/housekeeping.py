"""The background work of a replica: keeping its leases (and flushing pending checkpoints), evicting idle
sessions to the store."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from .store import StoreUnavailable

if TYPE_CHECKING:
    from .manager import SessionManager

log = logging.getLogger(__name__)


async def keep_leases(manager: SessionManager) -> None:
    """Renew every lease this replica holds every ``lease_ttl / 3``; drop sessions whose lease was lost."""
    settings = manager.settings
    interval = max(settings.lease_ttl / 3, 0.2)
    while True:
        await asyncio.sleep(interval)
        for session in list(manager.sessions.values()):
            persistence = session.persistence
            if persistence is None:
                continue
            try:
                ok = await manager.store.renew(
                    session.id, manager.replica_id, manager.url, persistence.epoch, settings.lease_ttl
                )
                if ok and persistence.pending:
                    ok = await persistence.flush() or not persistence.lost
            except StoreUnavailable:
                continue  # keep serving what we own; commits stay pending until the store is back
            if not ok:
                log.warning("session %s: lease lost to another replica; dropping it here", session.id)
                persistence.lost = True
                await manager.drop(session, release=False)


async def evict_idle(manager: SessionManager) -> None:
    """Evict sessions idle for ``evict_idle_after`` seconds: their kernels go, their state stays stored."""
    after = manager.settings.evict_idle_after
    interval = min(max(after / 4, 0.5), 30.0)
    while True:
        await asyncio.sleep(interval)
        now = time.time()
        for session in list(manager.sessions.values()):
            if now - session.last_activity >= after:
                with contextlib.suppress(Exception):
                    await manager.evict(session)
