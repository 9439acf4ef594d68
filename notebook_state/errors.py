"""Errors of the portable state that a kernel manager reports to its clients.

The store's own failures (``StaleEpoch``, ``StoreUnavailable``) live in ``notebook_state.store``, signature
failures (``VerificationError``) in ``notebook_state.signing``.
"""

from __future__ import annotations


class StateError(Exception):
    """Base of the state layer's errors that a client should hear about."""


class LeaseLost(StateError):
    """Another owner holds the session now (its epoch moved): this owner's commits are fenced off."""

    def __init__(self, session_id: str) -> None:
        super().__init__(
            f"session {session_id!r} is now owned by another replica; this cell's effects were not committed"
        )
        self.session_id = session_id


class CheckpointError(Exception):
    """The kernel could not produce a checkpoint, or service code run in the kernel raised."""
