"""Errors the session layer raises; the HTTP layer (``kernel_gateway.errors``) maps each to one status code."""

from __future__ import annotations

from notebook_state.errors import LeaseLost, StateError

__all__ = [
    "CheckpointRejected",
    "Draining",
    "InvalidSessionId",
    "KernelSpecNotFound",
    "LeaseLost",
    "LeaseUncertain",
    "Misdirected",
    "OwnedElsewhere",
    "OwnerUnreachable",
    "ReplicaFull",
    "SessionExists",
    "SessionNotFound",
    "StateError",
    "StoreDown",
    "TenantSessionLimit",
    "UntrustedOwner",
]


class SessionNotFound(StateError):
    def __init__(self, session_id: str) -> None:
        super().__init__(f"session {session_id!r} does not exist")
        self.session_id = session_id


class SessionExists(StateError):
    def __init__(self, session_id: str) -> None:
        super().__init__(f"session {session_id!r} already exists")
        self.session_id = session_id


class InvalidSessionId(StateError):
    pass


class KernelSpecNotFound(StateError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no kernelspec named {name!r}")
        self.name = name


class Draining(StateError):
    def __init__(self) -> None:
        super().__init__("this replica is shutting down and takes no new work")


class ReplicaFull(StateError):
    """This replica serves --max-sessions sessions already: 503 + Retry-After, so the platform scales out."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"this replica serves its limit of {limit} sessions; retry (another replica may take it)")


class TenantSessionLimit(StateError):
    """The tenant has as many sessions as it may have."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"this tenant already has its limit of {limit} sessions: delete one first")


class UntrustedOwner(StateError):
    """The owner address the store names is not a replica's (--peer-cidr, --peer-url-pattern): not contacted."""


class OwnedElsewhere(StateError):
    """The session is live on another replica: the request is forwarded there."""

    def __init__(self, session_id: str, owner: str, url: str, epoch: int) -> None:
        super().__init__(f"session {session_id!r} is served by replica {owner} at {url}")
        self.session_id = session_id
        self.owner = owner
        self.url = url
        self.epoch = epoch


class StoreDown(StateError):
    pass


class CheckpointRejected(StateError):
    pass


class Misdirected(StateError):
    """A forwarded request reached a replica that does not own the session either."""


class LeaseUncertain(StateError):
    """This replica can no longer be sure it still holds the session's lease (the store has not confirmed it
    in time), so it runs nothing of the session: the kernel is dropped here and the next request restores
    the session from its last commit, on whichever replica then holds the lease.

    ``cell`` says what became of the request's cell: ``not run``, ``not saved`` (it ran, but its effects were
    discarded with the kernel: safe to send again) or ``unknown`` (a commit was sent and its answer lost).
    """

    def __init__(self, session_id: str, cell: str = "not run") -> None:
        super().__init__(
            f"session {session_id!r}: this replica could not renew its lease in time (it was paused, or cut "
            f"off from the state store), so it stopped running the session; the cell: {cell}; retry shortly"
        )
        self.session_id = session_id
        self.details = {"cell": cell}


class OwnerUnreachable(StateError):
    """The session's owner did not answer in time and is not provably gone, so its lease decides: retry.
    ``cell``: ``not run`` when the request never reached the owner, else ``unknown``."""

    def __init__(self, message: str, cell: str = "unknown") -> None:
        super().__init__(message)
        self.details = {"cell": cell}
