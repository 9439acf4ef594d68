"""State stores: Redis (one Redis or a Redis Cluster) for replicas that share sessions, SQLite for one process."""

from .base import LIST_LIMIT, Commit, Fence, Lease, Renewal, SessionRecord, StaleEpoch, StateStore, StoreUnavailable
from .local_store import LocalStore
from .redis_store import RedisStore

__all__ = [
    "LIST_LIMIT",
    "Commit",
    "Fence",
    "Lease",
    "LocalStore",
    "RedisStore",
    "Renewal",
    "SessionRecord",
    "StaleEpoch",
    "StateStore",
    "StoreUnavailable",
]
