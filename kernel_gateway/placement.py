"""Where a session is served: here, on its live owner, or here after taking it over from a dead one.

This is the one place that decides, for every face alike (REST, SSE, the kernels API and the kernel
WebSocket). A face supplies two callbacks: what to do with the live session when it is here, and how to reach
the owner when it is elsewhere (forward an HTTP request, relay a WebSocket). Reaching the owner raises
``OwnerGone`` when the owner provably is not serving (it refused the connection); then the session is taken
over, fenced on the epoch the dead owner held, so two replicas that both saw it gone cannot both win.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from .sessions.errors import Misdirected, OwnedElsewhere
from .sessions.session import Session
from .types import SessionDirectory

log = logging.getLogger(__name__)

T = TypeVar("T")

ATTEMPTS = 3
"""How often one request follows a session that keeps moving before giving up (421)."""


@dataclass(frozen=True, slots=True)
class Here:
    """The session is live on this replica (possibly just restored onto it)."""

    session: Session


@dataclass(frozen=True, slots=True)
class Owner:
    """Another replica holds a live lease on the session."""

    session_id: str
    replica: str
    url: str
    epoch: int

    @classmethod
    def of(cls, exc: OwnedElsewhere) -> Owner:
        return cls(exc.session_id, exc.owner, exc.url, exc.epoch)


Location = Here | Owner


class OwnerGone(Exception):
    """The owner refused the connection: it is provably not serving, so its lease can be taken."""


class Placement:
    def __init__(self, sessions: SessionDirectory[Session]) -> None:
        self.sessions = sessions

    async def locate(self, session_id: str, forwarded: bool) -> Location:
        """Here (restored onto this replica if no live replica owns it) or its live owner.

        A request another replica already forwarded must not travel again: if this replica is not the owner
        either, the answer is Misdirected (421), never a second hop or a take-over from a live owner.
        """
        try:
            return Here(await self.sessions.resolve(session_id))
        except OwnedElsewhere as exc:
            if forwarded:
                raise Misdirected(f"session {session_id!r} is not served here; its owner is {exc.url}") from None
            return Owner.of(exc)

    async def take_over(self, owner: Owner) -> Location:
        """The owner is gone: take the session if its epoch is still the dead owner's, else the new owner."""
        log.warning("session %s: owner %s is gone; taking the session over", owner.session_id, owner.url)
        try:
            return Here(await self.sessions.take_over(owner.session_id, owner.epoch))
        except OwnedElsewhere as exc:
            return Owner.of(exc)

    async def serve(
        self,
        session_id: str,
        forwarded: bool,
        here: Callable[[Session], Awaitable[T]],
        there: Callable[[Owner], Awaitable[T]],
    ) -> T:
        """Run ``here`` on the live session, or ``there`` against its live owner, wherever it is now."""
        location = await self.locate(session_id, forwarded)
        for _ in range(ATTEMPTS):
            if isinstance(location, Here):
                return await here(location.session)
            try:
                return await there(location)
            except OwnerGone:
                location = await self.take_over(location)
        last = location.url if isinstance(location, Owner) else "?"
        raise Misdirected(f"session {session_id!r} kept moving between replicas: last owner {last}")
