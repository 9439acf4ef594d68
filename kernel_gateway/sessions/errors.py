"""Errors the session layer raises; the HTTP layer (``kernel_gateway.errors``) maps each to one status code."""

from __future__ import annotations

from notebook_state.errors import LeaseLost, StateError

__all__ = [
    "CheckpointRejected",
    "Draining",
    "InvalidSessionId",
    "KernelSpecNotFound",
    "LeaseLost",
    "Misdirected",
    "OwnedElsewhere",
    "SessionExists",
    "SessionNotFound",
    "StateError",
    "StoreDown",
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
