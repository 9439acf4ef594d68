"""What every state store offers: session records, leases with fencing epochs, and signed checkpoints."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson


class StoreUnavailable(Exception):
    """The store cannot be reached; operations that need it answer 503, owned sessions keep running."""


class StaleEpoch(Exception):
    """A write carried a fencing token that is no longer the session's: this replica no longer owns it."""


@dataclass(frozen=True, slots=True)
class Fence:
    """The fencing token of one lease acquisition: the epoch (INCR'd by every acquisition) and a nonce drawn
    by the acquirer. The nonce tells two acquisitions apart even if a store failover lost an INCR and issued
    the same epoch twice."""

    epoch: int
    nonce: str

    @classmethod
    def new(cls, epoch: int) -> Fence:
        return cls(epoch, secrets.token_hex(8))


@dataclass(slots=True)
class Lease:
    owner: str
    url: str
    epoch: int
    expires_at: float  # this replica's wall clock, from the store's own remaining time to live

    def held_by_other(self, replica_id: str, now: float) -> bool:
        return self.owner != replica_id and self.expires_at > now


@dataclass(frozen=True, slots=True)
class Renewal:
    """One lease to extend: whose, at which fencing token, and the last execution count its kernel ran
    (recorded so a later owner can name the cells that ran but never committed)."""

    session_id: str
    owner: str
    url: str
    fence: Fence
    ran: int = 0


@dataclass(slots=True)
class SessionRecord:
    id: str
    kernel_name: str
    created: float
    last_activity: float = 0.0
    execution_count: int = 0
    lease: Lease | None = None
    checkpoint_bytes: int = 0
    checkpoint_at: float | None = None
    variables: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # the KERNEL_* variables its frontend asked for
    tenant: str = ""  # whose token created it; for every other tenant it does not exist ("" with no tenants)
    ran: int = 0  # the highest execution count any owner ran (committed or not); written by renewals and commits

    def to_fields(self) -> dict[str, str]:
        return {
            "kernel_name": self.kernel_name,
            "created": repr(self.created),
            "last_activity": repr(self.last_activity),
            "execution_count": str(self.execution_count),
            "checkpoint_bytes": str(self.checkpoint_bytes),
            "checkpoint_at": repr(self.checkpoint_at) if self.checkpoint_at is not None else "",
            "variables": _json(self.variables),
            "env": _json(self.env),
            "tenant": self.tenant,
        }

    @classmethod
    def from_fields(cls, session_id: str, fields: dict[str, str], lease: Lease | None) -> SessionRecord:
        return cls(
            id=session_id,
            kernel_name=fields.get("kernel_name", ""),
            created=float(fields.get("created") or 0),
            last_activity=float(fields.get("last_activity") or 0),
            execution_count=int(fields.get("execution_count") or 0),
            lease=lease,
            checkpoint_bytes=int(fields.get("checkpoint_bytes") or 0),
            checkpoint_at=float(fields["checkpoint_at"]) if fields.get("checkpoint_at") else None,
            variables=json.loads(fields.get("variables") or "[]"),
            env=json.loads(fields.get("env") or "{}"),
            tenant=fields.get("tenant", ""),
            ran=int(fields.get("ran") or 0),
        )


def _json(value: Any) -> str:
    # Written after every cell: orjson, several times faster. What it refuses (a lone surrogate in a string)
    # the standard library writes, escaped; either reads back the same with json.loads.
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        return json.dumps(value)


@dataclass(slots=True)
class Commit:
    """One checkpoint to write: the signed manifest, the new blobs, and the blobs it no longer needs."""

    manifest: bytes
    manifest_sig: str
    blobs: dict[str, bytes]
    keep: list[str]
    drop: list[str]
    record: SessionRecord


LIST_LIMIT = 1000
"""The most sessions one listing returns; ``after`` pages on."""


class StateStore(Protocol):
    async def ping(self) -> None: ...

    async def create(self, record: SessionRecord) -> bool:
        """Add a session; False if the id is taken."""

    async def get(self, session_id: str) -> SessionRecord | None: ...

    async def list_sessions(
        self, tenant: str = "", limit: int = LIST_LIMIT, after: str | None = None
    ) -> list[SessionRecord]:
        """One page of a tenant's sessions in creation order: at most ``limit``, those after the session id
        ``after`` (the last one of the previous page). Cost: the page, never the whole keyspace."""

    async def delete(self, session_id: str) -> None:
        """Remove every key of the session."""

    async def acquire(
        self, session_id: str, owner: str, url: str, ttl: float, steal: int | None = None
    ) -> Fence | None:
        """Take the session's lease with a new fencing token (a higher epoch); None if another replica holds it.

        ``steal``: take it even from a live holder, if the current epoch is still this one (the holder was
        proven gone); the compare makes two replicas that both saw it gone race safely.
        """

    async def renew_many(self, renewals: list[Renewal], ttl: float) -> list[bool | None]:
        """Extend many leases in one round trip: per lease True (renewed), False (lost: its fence moved) or
        None (unknown: that part of the store did not answer). StoreUnavailable if none could be asked."""

    async def release(self, session_id: str, owner: str, fence: Fence) -> None: ...

    async def commit(self, session_id: str, fence: Fence, commit: Commit, ttl: float) -> None:
        """Atomically replace the manifest if ``fence`` is current (else StaleEpoch); drop unneeded blobs."""

    async def load_manifest(self, session_id: str) -> tuple[bytes, str] | None: ...

    async def load_blobs(self, session_id: str, keys: list[str]) -> dict[str, list[bytes]]:
        """Each found blob as its stored chunks (joining 100 MB would only cost a copy)."""

    async def close(self) -> None: ...
