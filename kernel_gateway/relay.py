"""Relaying a kernel WebSocket to the replica that owns the session, frame for frame.

The relayed handshake carries this replica's inter-replica claim, never the user's token. Only proof that the
owner is gone (the connection refused, or another replica answering at its address) leads to a take-over; any
other refusal is passed on to the client as the owner gave it, and a handshake the owner does not complete is
given up on when its lease lapses (503 + Retry-After). While relaying, the owner's lease is watched too: if it
lapses, the client is closed with 1012 and its reconnect reaches the session's next owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from urllib.parse import urlencode

import orjson
import websockets
from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect
from websockets.asyncio.client import ClientConnection, connect

from .deps import Gateway
from .errors import error_body
from .forward import owner_lapsed, refused
from .limits import WS_MAX_MESSAGE
from .peers import REPLICA_HEADER
from .placement import Owner, OwnerGone, OwnerMoved
from .responses import JSONResponse
from .sessions.errors import OwnerUnreachable
from .wsproto import V1_SUBPROTOCOL

log = logging.getLogger(__name__)

CLOSE_SESSION_MOVED = 1012


async def _open(gw: Gateway, websocket: WebSocket, owner: Owner, v1: bool, tenant: str | None) -> ClientConnection:
    path = f"/api/kernels/{owner.session_id}/channels"
    url = "ws" + owner.url.rstrip("/").removeprefix("http") + path
    client_session = websocket.query_params.get("session_id")
    if client_session is not None:
        # The owner keeps what a cut socket missed under this key; a reconnect through any replica resumes it.
        url += "?" + urlencode({"session_id": client_session})
    opening = asyncio.ensure_future(
        connect(
            url,
            additional_headers=gw.peers.headers("GET", path, tenant, to=owner.replica),
            subprotocols=[V1_SUBPROTOCOL] if v1 else None,  # type: ignore[list-item]
            open_timeout=2 * gw.settings.lease_ttl,
            max_size=WS_MAX_MESSAGE,  # as the replica itself takes: a bigger frame closes the socket (1009)
            compression=None,
            close_timeout=1,  # a paused owner does not answer a close handshake: do not wait for it long
        )
    )
    watch = asyncio.ensure_future(owner_lapsed(gw, owner))
    try:
        await asyncio.wait({opening, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if not opening.done():
        opening.cancel()
        raise OwnerUnreachable(f"session {owner.session_id!r}: {watch.result()}; retry to reach its new owner")
    try:
        return opening.result()
    except websockets.InvalidStatus as exc:
        response = exc.response
        answered = response.headers.get(REPLICA_HEADER)
        if response.status_code == 421:
            if answered and answered != owner.replica:
                raise OwnerGone(f"replica {answered} answers at {owner.url}, not the owner {owner.replica}") from exc
            raise OwnerMoved() from exc
        raise _Denied(response.status_code, bytes(response.body or b""), response.headers.get("retry-after")) from exc
    except OSError as exc:
        if refused(exc):
            raise OwnerGone(f"owner {owner.replica} refused the connection at {owner.url}") from exc
        raise OwnerUnreachable(f"session {owner.session_id!r}: its owner {owner.url} is unreachable: {exc}") from exc
    except (TimeoutError, websockets.InvalidHandshake) as exc:
        raise OwnerUnreachable(f"session {owner.session_id!r}: its owner {owner.url} did not answer: {exc}") from exc


class _Denied(Exception):
    def __init__(self, status: int, body: bytes, retry_after: str | None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.retry_after = retry_after


async def relay(gw: Gateway, websocket: WebSocket, owner: Owner, v1: bool, tenant: str | None = None) -> None:
    """Open the owner's channels WebSocket and pipe both ways until either side closes.

    Raises ``OwnerGone``/``OwnerMoved``/``OwnerUnreachable`` before accepting the client; an owner's own
    refusal (401, 404, 503, ...) is passed on to the client as it is.
    """
    try:
        upstream = await _open(gw, websocket, owner, v1, tenant)
    except _Denied as denied:
        headers = {"Retry-After": denied.retry_after} if denied.retry_after else None
        try:
            content = JSONResponse(orjson.loads(denied.body), status_code=denied.status, headers=headers)
        except orjson.JSONDecodeError:
            content = JSONResponse(error_body(denied.status, "the session's owner refused the connection"),
                                   status_code=denied.status, headers=headers)  # fmt: skip
        await websocket.send_denial_response(content)
        return
    await websocket.accept(subprotocol=V1_SUBPROTOCOL if v1 else None)
    reason = "owner replica closed the connection"
    try:
        down = asyncio.create_task(_downstream(upstream, websocket))
        up = asyncio.create_task(_upstream(websocket, upstream))
        watch = asyncio.create_task(owner_lapsed(gw, owner))
        await asyncio.wait({down, up, watch}, return_when=asyncio.FIRST_COMPLETED)
        if watch.done():
            reason = "the session's owner stopped answering; reconnect"
        for task in (down, up, watch):
            task.cancel()
        with contextlib.suppress(Exception):
            # The client first: 1012 tells it to reconnect, which lands on the session's live owner at once.
            await websocket.close(CLOSE_SESSION_MOVED, reason)
    finally:
        with contextlib.suppress(Exception):
            await upstream.close()


async def _downstream(upstream: ClientConnection, websocket: WebSocket) -> None:
    with contextlib.suppress(websockets.ConnectionClosed, RuntimeError):
        async for frame in upstream:
            if isinstance(frame, str):
                await websocket.send_text(frame)
            else:
                await websocket.send_bytes(frame)


async def _upstream(websocket: WebSocket, upstream: ClientConnection) -> None:
    with contextlib.suppress(WebSocketDisconnect, websockets.ConnectionClosed, RuntimeError):
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            await upstream.send(data if data is not None else message.get("text") or "")
