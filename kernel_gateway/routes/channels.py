"""The kernel WebSocket, ``/api/kernels/{id}/channels``: one connection of a frontend to a session."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import time
from collections import deque

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from ..auth import authenticate, remember
from ..deps import Gateway
from ..errors import RETRY_AFTER, error_body, status_of
from ..metrics import Metrics
from ..placement import Owner
from ..relay import relay
from ..responses import JSONResponse
from ..sessions.acks import closes_cell
from ..sessions.errors import SessionNotFound, StateError
from ..sessions.replay import message_size
from ..sessions.session import Session
from ..types import Channel, KernelMessage
from ..wsproto import (
    V1_SUBPROTOCOL,
    ProtocolError,
    decode_json,
    decode_legacy_binary,
    decode_v1,
    encode_json_payload,
    encode_v1,
)
from ..wsserver import BINARY, SEND_MANY, TEXT, WRITE, send_many

log = logging.getLogger(__name__)

router = APIRouter(tags=["jupyter"])

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_TRY_AGAIN = 1013

BATCH_MESSAGES = 64
BATCH_BYTES = 1024 * 1024
"""At most this much goes to the socket in one write (at least one message, however big)."""
CELL_HOLD = 0.010
"""Seconds a cell's first messages (its ``status: busy``, ``execute_input``, outputs) may wait for the cell's end
before they are written: a quick cell goes out in one write, a longer one shows its first output this much later."""


class ConnectionState(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class ChannelConnection:
    """Relays one WebSocket to its session; writes go through a queue bounded in messages and in bytes, so a
    slow client stalls only itself, and is dropped when it falls too far behind.

    The writer takes everything queued when it wakes (a cell's reply and idle are released together) and,
    where the server offers ``SEND_MANY`` (``kernel_gateway.wsserver``), sends it in one write. A cell's
    ``status: busy`` and ``execute_input``, last in the queue, wait up to ``COALESCE_BUSY`` each for what follows
    them (the execute_input, a quick cell's result).
    """

    def __init__(
        self,
        ws: WebSocket,
        session: Session,
        v1: bool,
        queue_size: int,
        idle_timeout: float,
        metrics: Metrics,
        queue_bytes: int = 64 * 1024**2,
    ) -> None:
        self.ws = ws
        self.session = session
        # The frontend's own session id (JupyterLab sends it in the URL): a reconnect naming it resumes.
        self.client_session = ws.query_params.get("session_id")
        self.v1 = v1
        self.state = ConnectionState.OPEN
        self.idle_timeout = idle_timeout
        self.metrics = metrics
        self.last_traffic = time.monotonic()
        self._queue: deque[tuple[KernelMessage, int]] = deque()
        self._max_messages = queue_size
        self._queued_bytes = 0
        self._max_bytes = queue_bytes
        self._wakeup: asyncio.Future[None] | None = None  # the writer waits on it while the queue is empty
        self._close: tuple[int, str] = (CLOSE_NORMAL, "")

    def deliver(self, msg: KernelMessage) -> None:
        if self.state is not ConnectionState.OPEN:
            return
        size = message_size(msg)
        queue = self._queue
        # One message always fits, however big: the frame limit bounds it.
        if queue and (len(queue) >= self._max_messages or self._queued_bytes + size > self._max_bytes):
            log.warning("session %s: WebSocket client too slow, closing it", self.session.id)
            self.close_soon(CLOSE_TRY_AGAIN, "client too slow")
            return
        queue.append((msg, size))
        self._queued_bytes += size
        self._wake()

    def close_soon(self, code: int, reason: str) -> None:
        """Close after what is queued has gone out; nothing more is queued meanwhile."""
        if self.state is ConnectionState.OPEN:
            self.state = ConnectionState.CLOSING
            self._close = (code, reason)
            self._wake()

    def _wake(self) -> None:
        waiter = self._wakeup
        if waiter is not None:
            _wake(waiter)

    async def run(self) -> None:
        self.session.attach(self, self.client_session)
        self.metrics.ws_connections.inc()
        loop = asyncio.get_running_loop()
        writer = loop.create_task(self._write())
        reader = loop.create_task(self._read())
        watchdog = loop.create_task(self._watch_idle()) if self.idle_timeout > 0 else None
        try:
            await asyncio.wait({writer, reader}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.state = ConnectionState.CLOSED
            self.session.detach(self, self.client_session)
            self.metrics.ws_connections.dec()
            reader.cancel()
            writer.cancel()
            if watchdog is not None:
                watchdog.cancel()
            with contextlib.suppress(Exception):
                await self.ws.close(*self._close)

    async def _read(self) -> None:
        ws = self.ws
        counter = self.metrics.ws_messages.labels("in")
        while True:
            try:
                message = await ws.receive()
            except (WebSocketDisconnect, RuntimeError):
                return
            if message["type"] == "websocket.disconnect":
                return
            self.last_traffic = time.monotonic()
            try:
                data = message.get("bytes")
                if data is not None:
                    msg = decode_v1(data) if self.v1 else decode_legacy_binary(data)
                else:
                    msg = decode_json(message.get("text") or "")
            except ProtocolError as exc:
                # Not a Jupyter message, so nothing to answer it on: dropped (as jupyter_server does), the
                # connection goes on. A frame past the size limit closes it (1009) before it gets here.
                log.warning("session %s: dropped a malformed WebSocket message: %s", self.session.id, exc)
                continue
            counter.inc()
            await self.session.submit(self, msg)

    async def _watch_idle(self) -> None:
        # One timer for the connection's life, not a timeout around every message the writer waits for.
        while self.state is ConnectionState.OPEN:
            left = self._idle_left()
            if left <= 0:
                # An open WebSocket pins a Knative pod (knative/serving#10835); let idle tabs go.
                self.close_soon(CLOSE_GOING_AWAY, "idle")
                return
            await asyncio.sleep(left)

    async def _write(self) -> None:
        ws = self.ws
        extension = ws.scope.get("extensions", {}).get(SEND_MANY)
        many = extension is not None
        write = extension.get(WRITE) if many else None
        counter = self.metrics.ws_messages.labels("out")
        queue = self._queue
        while True:
            if not queue:
                if self.state is not ConnectionState.OPEN:
                    return  # closing, and everything queued before the close went out
                await self._more()
                continue
            if self.state is ConnectionState.OPEN and opens_cell(queue[0][0]):
                await self._hold_cell(queue[0][0].parent_id)
            frames = [self._frame(msg) for msg in self._take()]
            self.last_traffic = time.monotonic()
            if write is not None and write(frames):
                pass  # written at once: the server's socket was plainly open and taking data
            elif many:
                await ws.send(send_many(frames))
            else:
                for opcode, payload in frames:
                    if opcode == BINARY:
                        await ws.send_bytes(payload)
                    else:
                        await ws.send_text(payload.decode())
            counter.inc(len(frames))

    async def _hold_cell(self, cell: str) -> None:
        """Wait, at most ``CELL_HOLD``, until the cell whose busy is the oldest queued message is over: its
        ``status: idle`` is queued and no reply is still owed to this connection (a reply goes out before the
        idle only when it is queued first). A quick cell's five messages then cost one write and wake the
        frontend once, not two or three times. A write's worth of messages ends the wait sooner, and so does
        an ``input_request`` (the cell waits for the user)."""
        expired = False

        def expire() -> None:
            # A flag, not the loop's clock: uvloop's timers run on a millisecond clock and may fire a little
            # before ``when()`` as ``loop.time()`` reads it.
            nonlocal expired
            expired = True
            self._wake()

        timer = asyncio.get_running_loop().call_later(CELL_HOLD, expire)
        queue, routes = self._queue, self.session.frontends.routes
        seen, idle = 0, False
        try:
            while not expired and self.state is ConnectionState.OPEN and len(queue) < BATCH_MESSAGES:
                if self._queued_bytes >= BATCH_BYTES:
                    return
                for msg, _ in itertools.islice(queue, seen, None):
                    if msg.channel is Channel.STDIN:
                        return
                    idle = idle or (msg.channel is Channel.IOPUB and closes_cell(msg) and msg.parent_id == cell)
                seen = len(queue)
                if idle and routes.get(cell) is not self:
                    return
                await self._more()
        finally:
            timer.cancel()

    async def _more(self) -> None:
        """Wait until something is queued or the connection closes (or the writer is woken otherwise)."""
        waiter = self._wakeup = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._wakeup = None

    def _take(self) -> list[KernelMessage]:
        """The oldest queued messages, up to one write's worth."""
        queue = self._queue
        taken: list[KernelMessage] = []
        size = 0
        while queue and len(taken) < BATCH_MESSAGES and (not taken or size + queue[0][1] <= BATCH_BYTES):
            msg, n = queue.popleft()
            taken.append(msg)
            size += n
        self._queued_bytes -= size
        return taken

    def _frame(self, msg: KernelMessage) -> tuple[int, bytes]:
        if self.v1:
            return BINARY, encode_v1(msg)
        text, payload = encode_json_payload(msg)
        return (TEXT if text else BINARY), payload

    def _idle_left(self) -> float:
        return self.idle_timeout - (time.monotonic() - self.last_traffic)


def opens_cell(msg: KernelMessage) -> bool:
    """A kernel's ``status: busy`` or ``execute_input``: more of the same request follows."""
    if msg.channel is not Channel.IOPUB:
        return False
    kind = msg.msg_type
    return kind == "execute_input" or (kind == "status" and msg.content.get("execution_state") == "busy")


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def _deny(websocket: WebSocket, status: int, message: str) -> None:
    headers = {"Retry-After": RETRY_AFTER} if status == 503 else None
    await websocket.send_denial_response(JSONResponse(error_body(status, message), status_code=status, headers=headers))


@router.websocket("/api/kernels/{kernel_id}/channels")
async def channels(websocket: WebSocket, kernel_id: str) -> None:
    gw: Gateway = websocket.app.state.gateway
    # A WebSocket another replica relays carries that replica's claim (naming the tenant) instead of a token.
    caller = authenticate(websocket, gw.tenants, gw.peers)
    if caller is None:
        await _deny(websocket, 401, "a valid token is required")
        return
    remember(websocket, caller)
    if gw.draining:
        await _deny(websocket, 503, "this replica is shutting down")
        return
    v1 = V1_SUBPROTOCOL in websocket.scope.get("subprotocols", [])

    async def here(session: Session) -> None:
        await websocket.accept(subprotocol=V1_SUBPROTOCOL if v1 else None)
        settings = gw.settings
        conn = ChannelConnection(
            websocket, session, v1, settings.ws_send_queue, settings.ws_idle_timeout, gw.metrics,
            int(settings.ws_send_queue_bytes),
        )  # fmt: skip
        if session.restored is not None and session.connections == set():
            # Tell the frontend this kernel came back from a checkpoint, at which execution count, and which
            # cells of an earlier owner were not saved.
            extra = {"restored": session.restored.to_json(), "notices": session.take_notices()}
            conn.deliver(session.status_message(session.execution_state, extra))
        await conn.run()

    async def there(owner: Owner) -> None:
        gw.peer_addresses.check(owner.session_id, owner.url)  # the address came from the store: a replica's?
        await relay(gw, websocket, owner, v1, caller.tenant)

    try:
        await gw.placement.serve(kernel_id, caller.claim, here, there, caller.tenant)
    except SessionNotFound:
        await _deny(websocket, 404, f"kernel {kernel_id!r} does not exist")
    except StateError as exc:
        await _deny(websocket, status_of(exc), str(exc))
