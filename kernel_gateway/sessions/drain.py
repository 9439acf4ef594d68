"""The end of a replica's sessions (SIGTERM): let running cells finish, commit what is pending, and name in
the log every session whose last cells could not be saved, so that nothing is lost silently."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection

from .session import Session

log = logging.getLogger(__name__)


async def wait_idle(sessions: Collection[Session], grace: float) -> None:
    """Wait up to ``grace`` seconds for running cells (and their checkpoints) to finish."""

    async def drained() -> None:
        await asyncio.gather(*(s.wait_idle() for s in list(sessions)))

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(drained(), grace)


async def save(session: Session) -> bool:
    """Commit what is pending of one session; False (and why, logged) if it could not be."""
    if session.persistence is None:
        return True
    try:
        if await session.persistence.flush():
            return True
        reason = "its lease was lost" if session.persistence.lost else "the store is unreachable"
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
    log.error("shutdown: session %s could not be saved: %s", session.id, reason)
    return False


async def save_all(sessions: Collection[Session]) -> None:
    """Commit every session's pending checkpoints at once; the ones that could not be saved are named."""
    listed = list(sessions)
    saved = await asyncio.gather(*(save(s) for s in listed))
    unsaved = [s.id for s, ok in zip(listed, saved, strict=True) if not ok]
    if unsaved:
        log.error(
            "shutdown: %d sessions could not be saved; their last cells are lost: %s",
            len(unsaved), ", ".join(sorted(unsaved)),
        )  # fmt: skip
