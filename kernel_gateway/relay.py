"""Relaying a kernel WebSocket to the replica that owns the session, frame for frame."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from urllib.parse import urlencode

import websockets
from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect
from websockets.asyncio.client import ClientConnection, connect

from .forward import FORWARDED
from .placement import Owner, OwnerGone
from .wsproto import V1_SUBPROTOCOL

log = logging.getLogger(__name__)


async def relay(websocket: WebSocket, owner: Owner, v1: bool, replica_id: str) -> None:
    """Open the owner's channels WebSocket and pipe both ways until either side closes.

    Raises ``OwnerGone`` (before accepting the client) when the owner refuses the connection.
    """
    url = "ws" + owner.url.rstrip("/").removeprefix("http") + f"/api/kernels/{owner.session_id}/channels"
    client_session = websocket.query_params.get("session_id")
    if client_session is not None:
        # The owner keeps what a cut socket missed under this key; a reconnect through any replica resumes it.
        url += "?" + urlencode({"session_id": client_session})
    headers = {FORWARDED: replica_id}
    auth = websocket.headers.get("authorization")
    if auth:
        headers["Authorization"] = auth
    elif "token" in websocket.query_params:
        headers["Authorization"] = f"token {websocket.query_params['token']}"
    try:
        upstream = await connect(
            url,
            additional_headers=headers,
            subprotocols=[V1_SUBPROTOCOL] if v1 else None,  # type: ignore[list-item]
            open_timeout=5,
            max_size=None,
            compression=None,
        )
    except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
        raise OwnerGone(str(exc)) from exc
    await websocket.accept(subprotocol=V1_SUBPROTOCOL if v1 else None)
    async with upstream:
        down = asyncio.create_task(_downstream(upstream, websocket))
        up = asyncio.create_task(_upstream(websocket, upstream))
        await asyncio.wait({down, up}, return_when=asyncio.FIRST_COMPLETED)
        for task in (down, up):
            task.cancel()
    with contextlib.suppress(Exception):
        # The owner went away mid-session: 1012 tells the client to reconnect, which lands on a live replica.
        await websocket.close(1012, "owner replica closed the connection")


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
