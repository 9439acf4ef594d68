"""How a session looks from outside: the Jupyter kernel model and the REST session view.

Both are built here, from the store's record and, when this replica serves the session, its live object:
live details win, the store adds the owner and the last checkpoint.
"""

from __future__ import annotations

import time

from notebook_state.store import SessionRecord

from .kernels.kernel import KernelState
from .sessions.session import Session
from .types import JSONDict


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e6):06d}Z"


def kernel_model(record: SessionRecord | None, session: Session | None) -> JSONDict:
    """The kernel model of the Jupyter API (``GET /api/kernels/{id}``)."""
    if session is not None:
        return {
            "id": session.id,
            "name": session.kernel_name,
            "last_activity": iso(session.last_activity),
            "execution_state": session.execution_state,
            "connections": len(session.connections),
        }
    assert record is not None, "a session view needs a record or a live session"
    return {
        "id": record.id,
        "name": record.kernel_name,
        "last_activity": iso(record.last_activity or record.created),
        "execution_state": "idle",
        "connections": 0,
    }


def session_info(record: SessionRecord | None, session: Session | None, now: float) -> JSONDict:
    """The session as the REST face shows it (``GET /sessions/{id}``)."""
    info: JSONDict = _live(session) if session is not None else {}
    if record is not None:
        lease = record.lease
        live_owner = lease is not None and lease.expires_at > now
        info.setdefault("id", record.id)
        info.setdefault("kernel_name", record.kernel_name)
        info.setdefault("state", "live elsewhere" if live_owner else "stored")
        info.setdefault("execution_state", "idle")
        info.setdefault("execution_count", record.execution_count)
        info.setdefault("created", iso(record.created))
        info.setdefault("last_activity", iso(record.last_activity or record.created))
        info.setdefault("connections", 0)
        info["owner"] = (
            {
                "replica": lease.owner,
                "url": lease.url,
                "epoch": lease.epoch,
                "expires_in": round(lease.expires_at - now, 3),
            }
            if lease is not None and live_owner
            else None
        )
        info["checkpoint"] = {
            "bytes": record.checkpoint_bytes,
            "at": iso(record.checkpoint_at) if record.checkpoint_at else None,
            "age_seconds": round(now - record.checkpoint_at, 3) if record.checkpoint_at else None,
            "variables": record.variables,
            "execution_count": record.execution_count,
        }
    if session is not None and session.persistence is not None:
        checkpoint = info.setdefault("checkpoint", {})
        checkpoint.update(session.persistence.describe())
    return info


def _live(session: Session) -> JSONDict:
    return {
        "id": session.id,
        "kernel_name": session.kernel_name,
        "state": session.state.value,
        "execution_state": session.execution_state,
        "execution_count": session.execution_count,
        "created": iso(session.created),
        "last_activity": iso(session.last_activity),
        "connections": len(session.connections),
        "kernel_restarts": session.kernel_restarts,
        "kernel_alive": session.kernel.state is KernelState.READY,
        "restored": session.restored.to_json() if session.restored else None,
    }
