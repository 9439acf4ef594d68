"""Where a session is served: here, on its live owner, or here after taking it over from a dead one.

This is the one place that decides, for every face alike (REST, SSE, the kernels API and the kernel
WebSocket). A face supplies two callbacks: what to do with the live session when it is here, and how to reach
the owner when it is elsewhere (forward an HTTP request, relay a WebSocket).

Taking a session over from a replica whose lease is still live needs proof that the owner is gone, and only
two things are proof: its address refuses the connection, or another replica identity answers there (a
restart in place: same address, new process). Reaching the owner raises ``OwnerGone`` then, and the session
is taken over, fenced on the epoch the dead owner held, so two replicas that both saw it gone cannot both
win. A timeout, a 5xx, a 401 or 404 is no proof: the owner may be paused or partitioned, so the client gets a
503 + Retry-After and the lease decides (it lapses within one TTL if the owner is really stuck). Nothing a
client sends can trigger a take-over: a forwarded request is one with a valid inter-replica claim.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from .peers import PeerClaim
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
    """Proof that the owner is not serving: its address refused the connection, or another replica answered
    there. Its lease can be taken."""


class OwnerMoved(Exception):
    """The owner answered that the session is no longer its own: look the session up again."""


class Placement:
    def __init__(self, sessions: SessionDirectory[Session], replica_id: str = "") -> None:
        self.sessions = sessions
        self.replica_id = replica_id

    async def locate(self, session_id: str, forwarded: bool, tenant: str | None = None) -> Location:
        """Here (restored onto this replica if no live replica owns it) or its live owner.

        A request another replica already forwarded must not travel again: if this replica is not the owner
        either, the answer is Misdirected (421), never a second hop or a take-over from a live owner.
        With ``tenant``, another tenant's session does not exist (404), wherever it lives.
        """
        try:
            return Here(await self.sessions.resolve(session_id, tenant))
        except OwnedElsewhere as exc:
            if forwarded:
                raise Misdirected(f"session {session_id!r} is not served here; its owner is {exc.url}") from None
            return Owner.of(exc)

    async def take_over(self, owner: Owner, tenant: str | None = None) -> Location:
        """The owner is gone: take the session if its epoch is still the dead owner's, else the new owner."""
        log.warning("session %s: owner %s at %s is gone; taking the session over", owner.session_id, owner.replica,
                    owner.url)  # fmt: skip
        try:
            return Here(await self.sessions.take_over(owner.session_id, owner.epoch, tenant))
        except OwnedElsewhere as exc:
            return Owner.of(exc)

    def check_addressee(self, claim: PeerClaim | None) -> None:
        """A forwarded request meant for another replica identity reached this one (the replica it was meant
        for restarted in place): answer 421 naming this replica, which proves the intended one gone."""
        if claim is not None and claim.to is not None and claim.to != self.replica_id:
            raise Misdirected(f"this is replica {self.replica_id}, not {claim.to}: that replica is gone from here")

    async def serve(
        self,
        session_id: str,
        claim: PeerClaim | None,
        here: Callable[[Session], Awaitable[T]],
        there: Callable[[Owner], Awaitable[T]],
        tenant: str | None = None,
    ) -> T:
        """Run ``here`` on the live session, or ``there`` against its live owner, wherever it is now, as
        ``tenant`` sees it (None: every session)."""
        self.check_addressee(claim)
        forwarded = claim is not None
        location = await self.locate(session_id, forwarded, tenant)
        for _ in range(ATTEMPTS):
            if isinstance(location, Here):
                return await here(location.session)
            try:
                return await there(location)
            except OwnerGone as exc:
                log.warning("session %s: %s", session_id, exc)
                location = await self.take_over(location, tenant)
            except OwnerMoved:
                location = await self.locate(session_id, forwarded, tenant)
        last = location.url if isinstance(location, Owner) else "?"
        raise Misdirected(f"session {session_id!r} kept moving between replicas: last owner {last}")
