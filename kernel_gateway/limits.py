"""A request body limit enforced while the body streams in, so that no oversized body is ever buffered."""

from __future__ import annotations

import orjson
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_body

WS_MAX_MESSAGE = 64 * 1024 * 1024
"""The largest WebSocket message a replica takes or relays; a bigger one closes the socket (1009)."""


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_body_size: int) -> None:
        self.app = app
        self.max_body_size = max_body_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_size
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > limit:
                    await _reject(send, limit)
                    return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Raised inside the route's body read, so the app's error handlers answer it.
                    raise HTTPException(413, _message(limit))
            return message

        await self.app(scope, limited_receive, send)


def _message(limit: int) -> str:
    return f"request body exceeds the limit of {limit} bytes"


async def _reject(send: Send, limit: int) -> None:
    body = orjson.dumps(error_body(413, _message(limit)))
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
