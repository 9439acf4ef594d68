"""State stores: Redis for replicas that share sessions, SQLite on disk for one process."""

from .base import Commit, Lease, SessionRecord, StaleEpoch, StateStore, StoreUnavailable
from .local_store import LocalStore
from .redis_store import RedisStore

__all__ = [
    "Commit",
    "Lease",
    "LocalStore",
    "RedisStore",
    "SessionRecord",
    "StaleEpoch",
    "StateStore",
    "StoreUnavailable",
]
