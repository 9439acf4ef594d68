"""The kernel WebSocket's send side in-process: the connection's writer takes what is queued in one go, and
uvicorn's protocol (``kernel_gateway.wsserver``) sends such a batch in one write, frames exactly as websockets
builds them. Also: a reply whose metadata is not an object still reaches its frontend."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import uvicorn
from websockets.asyncio.client import connect
from websockets.frames import Frame, Opcode

from kernel_gateway.kernels.kernel import KernelState
from kernel_gateway.metrics import Metrics
from kernel_gateway.routes.channels import BATCH_MESSAGES, ChannelConnection
from kernel_gateway.sessions.frontends import Frontends
from kernel_gateway.sessions.session import Session
from kernel_gateway.types import Channel, KernelMessage
from kernel_gateway.wsproto import encode_json
from kernel_gateway.wsserver import BINARY, SEND_MANY, TEXT, BatchingWebSocketProtocol, frame_header, send_many
from notebook_state.checkpoint import CheckpointOutcome, CheckpointStatus

# -- frames, as data -------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70_000])
@pytest.mark.parametrize(("opcode", "op"), [(TEXT, Opcode.TEXT), (BINARY, Opcode.BINARY)])
def test_frame_header_is_what_websockets_serialises_for_a_server(size: int, opcode: int, op: Any) -> None:
    payload = b"a" * size
    assert frame_header(opcode, size) + payload == Frame(op, payload).serialize(mask=False)


# -- the protocol, under a real uvicorn on loopback -------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


BATCH: list[tuple[int, bytes]] = [
    (TEXT, b"one"),
    (BINARY, b"\x00\x01"),
    (TEXT, "é".encode() * 200),
    (BINARY, b"z" * 70_000),
]


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "websocket":
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    offered = SEND_MANY in scope.get("extensions", {})
    await send({"type": "websocket.send", "text": f"offered={offered}"})
    await send(send_many(BATCH))
    await send({"type": "websocket.send", "text": "after"})
    msg = await receive()  # the client's close
    assert msg["type"] == "websocket.disconnect"


@pytest.fixture(params=[False, True], ids=["plain", "deflate"])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    # With permessage-deflate negotiated (the client below asks for it) frames go through websockets.
    port = _free_port()
    config = uvicorn.Config(_app, host="127.0.0.1", port=port, ws=BatchingWebSocketProtocol, log_config=None,
                            ws_per_message_deflate=request.param, lifespan="off")  # fmt: skip
    srv = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(srv.serve())
    for _ in range(500):
        if srv.started:
            break
        await asyncio.sleep(0.01)
    assert srv.started
    try:
        yield f"ws://127.0.0.1:{port}/"
    finally:
        srv.should_exit = True
        await asyncio.wait_for(task, 30)


async def test_a_batch_arrives_as_its_messages_in_order(server: str) -> None:
    async with connect(server, max_size=None) as ws:
        got = [await asyncio.wait_for(ws.recv(), 30) for _ in range(2 + len(BATCH))]
    assert got[0] == "offered=True"
    expected = [payload.decode() if op == TEXT else payload for op, payload in BATCH]
    assert got[1:-1] == expected
    assert got[-1] == "after"


# -- the connection's writer -----------------------------------------------------------------------------


class _Socket:
    """What the writer sees of Starlette's WebSocket: the sends it makes, by kind."""

    def __init__(self, batching: bool) -> None:
        self.scope: dict[str, Any] = {"extensions": {SEND_MANY: {}} if batching else {}}
        self.query_params: dict[str, str] = {}
        self.sends: list[Any] = []

    async def send(self, message: dict[str, Any]) -> None:
        self.sends.append(list(message["skg.frames"]))

    async def send_text(self, text: str) -> None:
        self.sends.append(text)

    async def send_bytes(self, data: bytes) -> None:
        self.sends.append(data)


class _Session:
    id = "s"

    def __init__(self) -> None:
        self.frontends = Frontends(1024)


def _status(state: str, n: int = 0) -> KernelMessage:
    return KernelMessage(Channel.IOPUB, {"msg_id": f"m{n}", "msg_type": "status"}, {"msg_id": "cell"}, {},
                         {"execution_state": state})  # fmt: skip


def _connection(ws: _Socket, **kw: Any) -> ChannelConnection:
    return ChannelConnection(ws, _Session(), False, 10_000, 0, Metrics(), **kw)  # type: ignore[arg-type]


async def test_what_is_queued_goes_in_one_send_in_order_and_a_close_waits_for_it() -> None:
    ws = _Socket(batching=True)
    conn = _connection(ws)
    writer = asyncio.get_running_loop().create_task(conn._write())
    msgs = [_status("busy", 1), _status("idle", 2)]
    for m in msgs:
        conn.deliver(m)
    conn.close_soon(1000, "bye")
    conn.deliver(_status("busy", 3))  # after the close: never sent
    await asyncio.wait_for(writer, 30)
    assert ws.sends == [[(TEXT, encode_json(m).encode()) for m in msgs]]  # type: ignore[union-attr]
    assert [orjson.loads(frame)["content"]["execution_state"] for _, frame in ws.sends[0]] == ["busy", "idle"]


async def test_a_long_backlog_is_cut_into_bounded_writes() -> None:
    ws = _Socket(batching=True)
    conn = _connection(ws)
    for n in range(BATCH_MESSAGES * 2 + 1):
        conn.deliver(_status("busy", n))
    conn.close_soon(1000, "")
    await asyncio.wait_for(conn._write(), 30)
    assert [len(s) for s in ws.sends] == [BATCH_MESSAGES, BATCH_MESSAGES, 1]
    assert conn._queued_bytes == 0


async def test_without_the_extension_each_message_is_its_own_send() -> None:
    ws = _Socket(batching=False)
    conn = _connection(ws)
    writer = asyncio.get_running_loop().create_task(conn._write())
    conn.deliver(_status("busy"))
    await asyncio.sleep(0)  # the writer is waiting again, with nothing queued
    buffered = _status("idle")
    buffered.buffers = [b"\x00"]
    conn.deliver(buffered)
    conn.close_soon(1000, "")
    await asyncio.wait_for(writer, 30)
    assert isinstance(ws.sends[0], str) and isinstance(ws.sends[1], bytes) and len(ws.sends) == 2


async def test_a_client_too_slow_is_closed_and_its_writer_ends() -> None:
    ws = _Socket(batching=True)
    conn = ChannelConnection(ws, _Session(), False, 16, 0, Metrics())  # type: ignore[arg-type]
    for n in range(17):
        conn.deliver(_status("busy", n))
    assert conn.state.value == "closing" and conn._close[0] == 1013
    await asyncio.wait_for(conn._write(), 30)
    assert sum(len(s) for s in ws.sends) == 16


# -- a reply whose metadata is not an object -------------------------------------------------------------


class _Kernel:
    name = "python3"
    id = "k"
    listener: Any = None
    state = KernelState.READY

    def __init__(self) -> None:
        self.sent: list[KernelMessage] = []

    def send(self, msg: KernelMessage) -> None:
        self.sent.append(msg)


class _Persistence:
    def __init__(self) -> None:
        self.offers: list[object] = []

    def offer(self, found: object) -> None:
        self.offers.append(found)

    async def after_cell(self, kernel: Any) -> CheckpointOutcome:
        return CheckpointOutcome(CheckpointStatus.COMMITTED)


class _Frontend:
    def __init__(self) -> None:
        self.got: list[KernelMessage] = []

    def deliver(self, msg: KernelMessage) -> None:
        self.got.append(msg)


@pytest.mark.parametrize("metadata", [[1, 2], "text", None, 7])
async def test_a_reply_with_metadata_not_an_object_is_passed_through(metadata: Any) -> None:
    kernel, persistence, frontend = _Kernel(), _Persistence(), _Frontend()

    async def acquire() -> Any:
        return kernel

    session = Session("s", kernel, acquire, persistence=persistence)  # type: ignore[arg-type]
    session.attach(frontend)
    request = KernelMessage(Channel.SHELL, {"msg_id": "cell", "msg_type": "execute_request"}, {}, {},
                            {"code": "1"})  # fmt: skip
    await session.submit(frontend, request)
    assert kernel.sent == [request]
    raw = [b'{"msg_type":"execute_reply"}', b'{"msg_id":"cell"}', b"[1,2]", b'{"status":"ok"}']
    reply = KernelMessage(Channel.SHELL, {"msg_id": "r", "msg_type": "execute_reply"}, {"msg_id": "cell"},
                          metadata, {"status": "ok"}, raw=list(raw))  # fmt: skip
    session.on_kernel_message(reply)
    session.on_kernel_message(_status("idle"))
    for _ in range(100):  # the after-cell step runs as a task: its commit releases the reply and the idle
        if len(frontend.got) == 2:
            break
        await asyncio.sleep(0)
    assert [m.msg_type for m in frontend.got] == ["execute_reply", "status"]
    assert frontend.got[0].metadata == metadata and frontend.got[0].raw == raw
    assert persistence.offers == [None]
