"""Serving a session wherever it lives: here, forwarded to its live owner, or taken over from a dead one."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
from starlette.background import BackgroundTask
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response, StreamingResponse

from notebook_state.errors import Misdirected, OwnedElsewhere
from notebook_state.session import Session, iso
from notebook_state.store import SessionRecord

from .deps import Gateway

log = logging.getLogger(__name__)

FORWARDED = "x-skg-forwarded"
_ATTEMPTS = 3
_HOP_HEADERS = {"authorization", "content-type", "accept", "last-event-id"}


class OwnerGone(Exception):
    """The owner refused the connection: it is provably not serving, so its lease can be taken."""


def is_forwarded(conn: HTTPConnection) -> bool:
    return FORWARDED in conn.headers


async def on_owner(
    gw: Gateway, request: Request, session_id: str, here: Callable[[Session], Awaitable[Response]]
) -> Response:
    """Run ``here`` on the live session if this replica has or can take it; else forward to its owner."""
    last: OwnedElsewhere | None = None
    for _ in range(_ATTEMPTS):
        try:
            session = await gw.manager.resolve(session_id)
        except OwnedElsewhere as owner:
            last = owner
            if is_forwarded(request):
                raise Misdirected(f"session {session_id!r} is not served here; its owner is {owner.url}") from None
            try:
                return await forward(gw, request, owner.url)
            except OwnerGone:
                log.warning("session %s: owner %s is gone; taking the session over", session_id, owner.url)
                try:
                    session = await gw.manager.take_over(session_id, owner.epoch)
                except OwnedElsewhere as other:
                    last = other
                    continue
        return await here(session)
    raise Misdirected(f"session {session_id!r} kept moving between replicas: last owner {last.url if last else '?'}")


async def forward(gw: Gateway, request: Request, base_url: str) -> Response:
    """Relay the request to another replica and stream its answer back (JSON and SSE alike)."""
    headers = {k: v for k, v in request.headers.items() if k.lower() in _HOP_HEADERS}
    headers[FORWARDED] = gw.manager.replica_id
    body = await request.body()
    outgoing = gw.http.build_request(
        request.method, base_url.rstrip("/") + request.url.path, params=request.query_params, headers=headers,
        content=body,
    )  # fmt: skip
    try:
        upstream = await gw.http.send(outgoing, stream=True)
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise OwnerGone(str(exc)) from exc
    gw.metrics.forwards.inc()

    async def relay() -> AsyncIterator[bytes]:
        async for chunk in upstream.aiter_raw():
            yield chunk

    keep = {k: v for k, v in upstream.headers.items() if k.lower() in ("content-type", "location", "cache-control")}
    return StreamingResponse(
        relay(), status_code=upstream.status_code, headers=keep, background=BackgroundTask(upstream.aclose)
    )


async def delete_anywhere(gw: Gateway, request: Request, session_id: str) -> Response:
    """Delete a session: through its live owner (which shuts its kernel down), else straight from the store."""
    manager = gw.manager
    if session_id not in manager.sessions:
        record = await manager.record(session_id)
        lease = record.lease
        if lease is not None and lease.held_by_other(manager.replica_id, time.time()) and not is_forwarded(request):
            try:
                return await forward(gw, request, lease.url)
            except OwnerGone:
                pass
    await manager.delete(session_id)
    return Response(status_code=204)


def describe(record: SessionRecord | None, session: Session | None, now: float) -> dict[str, object]:
    """A session as the REST face shows it: live details from this replica, checkpoint and owner from the store."""
    info: dict[str, object] = dict(session.info()) if session is not None else {}
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
        assert isinstance(checkpoint, dict)
        checkpoint.update(session.persistence.describe())
    return info
