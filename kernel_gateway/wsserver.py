"""uvicorn's WebSocket protocol, able to send several messages in one write.

The kernel WebSocket sends messages in runs: a cell's ``execute_reply`` and its ``status: idle`` are released
together once the cell's checkpoint committed, and a kernel's iopub messages often arrive several at a time.
uvicorn writes each ASGI send to the socket on its own (a syscall, and a wake-up of the client, per message)
and passes each through the websockets state machine. This protocol advertises the ASGI extension
``SEND_MANY``: a ``websocket.send`` whose ``FRAMES`` key holds ``(opcode, payload)`` pairs goes out as one
write. While the connection is plainly open (no extension negotiated, no fragmented message under way) the
frames are built here, as websockets would build them for a server (unmasked, FIN set); otherwise they go
through websockets one by one, still in one write. The extension's ``WRITE`` function writes such frames at
once, without the ASGI send chain, whenever the socket is plainly open and takes data (else the ASGI send
decides). Reading pauses only once ``PAUSE_AT`` received messages wait for the app, not after every message
as uvicorn does (two ``epoll_ctl`` calls per message). Everything else is uvicorn's.
"""

from __future__ import annotations

import struct
from typing import Any, cast

from uvicorn._types import ASGISendEvent
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState
from websockets.http11 import Request
from websockets.protocol import State

SEND_MANY = "skg.websocket.send_many"
"""The ASGI extension (in ``scope["extensions"]``) saying that ``FRAMES`` is understood."""
FRAMES = "skg.frames"
WRITE = "write"
"""In the extension's dict: a plain function that writes frames at once when it can (``write_frames``)."""
PAUSE_AT = 16
"""Received messages the app has not taken yet before reading pauses."""
TEXT = 0x1
BINARY = 0x2

Frames = list[tuple[int, bytes]]

_SHORT = struct.Struct("!BB")
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")


def frame_header(opcode: int, size: int) -> bytes:
    """The header of an unmasked, final frame (RFC 6455 5.2), as a server sends it."""
    first = 0x80 | opcode
    if size < 126:
        return _SHORT.pack(first, size)
    if size < 1 << 16:
        return _MEDIUM.pack(first, 126, size)
    return _LONG.pack(first, 127, size)


def send_many(frames: Frames) -> dict[str, Any]:
    """The ASGI message that sends ``frames`` in one write (only where the scope offers ``SEND_MANY``)."""
    return {"type": "websocket.send", "bytes": None, "text": None, FRAMES: frames}


class BatchingWebSocketProtocol(WebSocketsSansIOProtocol):
    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # none when the handshake was refused
        if scope is not None:
            scope["extensions"][SEND_MANY] = {WRITE: self.write_frames}

    def write_frames(self, frames: Frames) -> bool:
        """Write ``frames`` now, in one write, if the connection is plainly open and the socket takes data (no
        ASGI send chain, no awaiting); False, having written nothing, when the ASGI send has to decide."""
        conn = self.conn
        if (
            not self.handshake_complete
            or self.close_sent
            or self.initial_response is not None
            or self.disconnected
            or not self.writable.is_set()
            or conn.state is not State.OPEN
            or conn.extensions
            or conn.expect_continuation_frame
        ):
            return False
        out = conn.data_to_send()  # what websockets still holds goes first (normally nothing)
        for opcode, payload in frames:
            out.append(frame_header(opcode, len(payload)))
            out.append(payload)
        self.transport.write(b"".join(out))
        return True

    def send_receive_event_to_app(self) -> None:
        # uvicorn pauses reading after every message and resumes once the app took it: two epoll_ctl calls per
        # message. The kernel WebSocket's reader takes each message at once, so reading is paused only once
        # messages pile up (a client sending faster than the session takes them).
        paused = self.read_paused
        self.read_paused = True  # uvicorn's own pause skipped
        try:
            super().send_receive_event_to_app()
        finally:
            self.read_paused = paused
        if not paused and self.queue.qsize() >= PAUSE_AT:
            self.read_paused = True
            self.transport.pause_reading()

    async def send(self, message: ASGISendEvent) -> None:
        frames = cast("Frames | None", cast(dict[str, Any], message).get(FRAMES))
        if frames is None:
            await super().send(message)
            return
        if not self.handshake_complete or self.close_sent or self.initial_response is not None:
            # Not an open connection: uvicorn's own checks say why, message by message.
            for opcode, payload in frames:
                single = {"bytes": payload} if opcode == BINARY else {"text": payload.decode()}
                await super().send(cast(ASGISendEvent, {"type": "websocket.send", **single}))
            return
        await self.writable.wait()
        if self.disconnected:
            raise ClientDisconnected()
        conn = self.conn
        try:
            if conn.state is State.OPEN and not conn.extensions and not conn.expect_continuation_frame:
                out = conn.data_to_send()  # what websockets still holds goes first (normally nothing)
                for opcode, payload in frames:
                    out.append(frame_header(opcode, len(payload)))
                    out.append(payload)
            else:
                for opcode, payload in frames:
                    if opcode == BINARY:
                        conn.send_binary(payload)
                    else:
                        conn.send_text(payload)
                out = conn.data_to_send()
        except InvalidState:
            raise ClientDisconnected() from None
        self.transport.write(b"".join(out))


__all__ = [
    "BINARY",
    "FRAMES",
    "PAUSE_AT",
    "SEND_MANY",
    "TEXT",
    "WRITE",
    "BatchingWebSocketProtocol",
    "Frames",
    "frame_header",
    "send_many",
]
