"""Reaching a session's owner replica over HTTP: a request forwarded and its answer streamed back."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
from starlette.background import BackgroundTask
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response, StreamingResponse

from .deps import Gateway
from .placement import Owner, OwnerGone
from .sessions.session import Session

Here = Callable[[Session], Awaitable[Response]]

FORWARDED = "x-skg-forwarded"
"""Marks a request one replica sent to another, so that it never travels a second time."""

_HOP_HEADERS = {"authorization", "content-type", "accept", "last-event-id"}


def is_forwarded(conn: HTTPConnection) -> bool:
    return FORWARDED in conn.headers


async def forward_request(gw: Gateway, request: Request, owner: Owner) -> Response:
    """Relay the request to the owner and stream its answer back (JSON and SSE alike).

    Raises OwnerGone when the owner refuses the connection.
    """
    headers = {k: v for k, v in request.headers.items() if k.lower() in _HOP_HEADERS}
    headers[FORWARDED] = gw.manager.replica_id
    body = await request.body()
    outgoing = gw.http.build_request(
        request.method, owner.url.rstrip("/") + request.url.path, params=request.query_params, headers=headers,
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
    if session_id not in manager.sessions and not is_forwarded(request):
        lease = (await manager.record(session_id)).lease
        if lease is not None and lease.held_by_other(manager.replica_id, time.time()):
            try:
                return await forward_request(gw, request, Owner(session_id, lease.owner, lease.url, lease.epoch))
            except OwnerGone:
                pass
    await manager.delete(session_id)
    return Response(status_code=204)


async def on_owner(gw: Gateway, request: Request, session_id: str, here: Here) -> Response:
    """Run ``here`` on the live session wherever placement finds it; forward to its owner otherwise."""
    return await gw.placement.serve(
        session_id, is_forwarded(request), here, lambda owner: forward_request(gw, request, owner)
    )
