"""Session records as the session layer reads them from the store: an id no session can have is not found
without asking the store, another tenant's session does not exist, and an unreachable store is a 503
(``StoreDown``), never a 500."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

from notebook_state.store import SessionRecord, StateStore, StoreUnavailable
from notebook_state.types import SESSION_ID_PATTERN

from .errors import InvalidSessionId, SessionNotFound, StoreDown

T = TypeVar("T")


def known_id(session_id: str) -> None:
    """Ids that no session can have (they were validated at creation) are simply not found: they never reach
    the store, where a glob character could match other sessions' keys."""
    if not SESSION_ID_PATTERN.match(session_id):
        raise SessionNotFound(session_id)


def validate_session_id(session_id: str) -> str:
    if not SESSION_ID_PATTERN.match(session_id):
        raise InvalidSessionId(
            f"invalid session id {session_id!r}: use 1-128 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return session_id


async def stored(op: Awaitable[T]) -> T:
    """A store call whose unreachable store is the client's 503."""
    try:
        return await op
    except StoreUnavailable as exc:
        raise StoreDown(f"the state store is unreachable: {exc}") from exc


async def find(store: StateStore, session_id: str, tenant: str | None) -> SessionRecord:
    """The session's record; with ``tenant``, another tenant's session is not found (never restored, never
    forwarded for this caller)."""
    known_id(session_id)
    record = await stored(store.get(session_id))
    if record is None or (tenant is not None and record.tenant != tenant):
        raise SessionNotFound(session_id)
    return record
