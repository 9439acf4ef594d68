"""Errors of the portable state that a kernel manager reports to its clients.

The store's own failures (``StaleEpoch``, ``StoreUnavailable``) live in ``notebook_state.store``, signature
failures (``VerificationError``) in ``notebook_state.signing``.
"""

from __future__ import annotations


class StateError(Exception):
    """Base of the state layer's errors that a client should hear about."""


class LeaseLost(StateError):
    """Another owner holds the session now (its epoch moved): this owner's commits are fenced off.

    ``cell`` says what became of the request's cell: ``not run``, ``not saved`` (nothing of this owner's since
    its last acknowledged commit landed), or ``unknown`` when a commit was sent and its answer lost before the
    fence refused the next one: that commit may have landed, and the new owner resumed from it."""

    def __init__(self, session_id: str, cell: str = "not saved") -> None:
        fate = {"not run": "this cell did not run", "not saved": "this cell's effects were not committed"}.get(
            cell, "this cell's effects may have been committed (a commit's answer was lost)"
        )
        super().__init__(f"session {session_id!r} is now owned by another replica; {fate}")
        self.session_id = session_id
        self.details = {"cell": cell}


class CheckpointError(Exception):
    """The kernel could not produce a checkpoint, or service code run in the kernel raised."""
