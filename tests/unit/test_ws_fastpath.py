"""The kernel WebSocket's cheap paths: frames written at once by the protocol (no ASGI send chain) while the
socket takes data, reading paused only once received messages pile up, and a quick cell's messages written
together, once it is over."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
from websockets.asyncio.client import connect

from kernel_gateway.metrics import Metrics
from kernel_gateway.routes import channels
from kernel_gateway.routes.channels import ChannelConnection
from kernel_gateway.sessions.frontends import Frontends
from kernel_gateway.types import Channel, KernelMessage
from kernel_gateway.wsserver import PAUSE_AT, SEND_MANY, TEXT, WRITE, BatchingWebSocketProtocol

GUARD = 30.0


async def wait_for(condition: Any) -> None:
    async with asyncio.timeout(GUARD):
        while not condition():  # noqa: ASYNC110 - the condition is a protocol's state, no event to wait on
            await asyncio.sleep(0.005)


# -- the protocol under a real uvicorn on loopback -------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _App:
    """Takes one message, then lets messages pile up until told to read on; says what the protocol did."""

    def __init__(self) -> None:
        self.protocol: BatchingWebSocketProtocol | None = None
        self.read_on = asyncio.Event()
        self.got: list[str] = []
        self.paused_after_one: bool | None = None
        self.direct: bool | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        write = scope["extensions"][SEND_MANY][WRITE]
        self.protocol = write.__self__
        self.direct = write([(TEXT, b"hello"), (TEXT, b"again")])
        protocol = self.protocol
        await wait_for(lambda: protocol.queue.qsize() == 1)  # one message came, not taken yet
        self.paused_after_one = protocol.read_paused
        self.got.append((await receive())["text"])
        await self.read_on.wait()
        while len(self.got) < 1 + PAUSE_AT * 2:
            self.got.append((await receive())["text"])
        await receive()  # the client's close


@pytest.fixture
async def app() -> AsyncIterator[tuple[_App, str]]:
    handler = _App()
    port = _free_port()
    config = uvicorn.Config(handler, host="127.0.0.1", port=port, ws=BatchingWebSocketProtocol, log_config=None,
                            ws_per_message_deflate=False, lifespan="off")  # fmt: skip
    srv = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(srv.serve())
    await wait_for(lambda: srv.started)
    try:
        yield handler, f"ws://127.0.0.1:{port}/"
    finally:
        srv.should_exit = True
        await asyncio.wait_for(task, GUARD)


async def test_frames_go_at_once_and_reading_pauses_only_when_messages_pile_up(app: tuple[_App, str]) -> None:
    handler, url = app
    async with connect(url, compression=None) as ws:
        assert [await asyncio.wait_for(ws.recv(), GUARD) for _ in range(2)] == ["hello", "again"]
        await ws.send("0")
        await wait_for(lambda: handler.paused_after_one is not None)
        assert handler.direct is True and handler.paused_after_one is False  # uvicorn would have paused here
        protocol = handler.protocol
        assert protocol is not None
        for n in range(1, 1 + PAUSE_AT * 2):
            await ws.send(str(n))
        await wait_for(lambda: protocol.read_paused)  # the app took none of them: reading stops
        handler.read_on.set()
        await wait_for(lambda: len(handler.got) == 1 + PAUSE_AT * 2)
        assert handler.got == [str(n) for n in range(1 + PAUSE_AT * 2)]
        assert not protocol.read_paused  # all taken: reading goes on
        # Closing: the protocol's own checks refuse a direct write, the ASGI send decides.
        protocol.close_sent = True
        assert protocol.write_frames([(TEXT, b"late")]) is False
        protocol.close_sent = False


# -- the connection's writer -----------------------------------------------------------------------------


class _Socket:
    def __init__(self, direct: bool) -> None:
        self.writes: list[list[tuple[int, bytes]]] = []
        self.sends: list[list[tuple[int, bytes]]] = []
        self.direct = direct
        self.scope: dict[str, Any] = {"extensions": {SEND_MANY: {WRITE: self.write}}}
        self.query_params: dict[str, str] = {}

    def write(self, frames: list[tuple[int, bytes]]) -> bool:
        if self.direct:
            self.writes.append(list(frames))
        return self.direct

    async def send(self, message: dict[str, Any]) -> None:
        self.sends.append(list(message["skg.frames"]))


class _Session:
    id = "s"

    def __init__(self) -> None:
        self.frontends = Frontends(1024)


def _iopub(msg_type: str, content: dict[str, Any], n: int, cell: str = "cell") -> KernelMessage:
    return KernelMessage(Channel.IOPUB, {"msg_id": f"m{n}", "msg_type": msg_type}, {"msg_id": cell}, {}, content)


def _reply(n: int, cell: str = "cell") -> KernelMessage:
    header = {"msg_id": f"m{n}", "msg_type": "execute_reply"}
    return KernelMessage(Channel.SHELL, header, {"msg_id": cell}, {}, {"status": "ok"})


def _connection(ws: _Socket) -> ChannelConnection:
    return ChannelConnection(ws, _Session(), False, 10_000, 0, Metrics())  # type: ignore[arg-type]


async def _turns() -> None:
    for _ in range(5):
        await asyncio.sleep(0)  # the writer has had its turns


def _written(ws: _Socket, direct: bool) -> list[int]:
    assert ws.sends == [] if direct else ws.writes == []
    return [len(frames) for frames in (ws.writes if direct else ws.sends)]


@pytest.fixture
def no_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(channels, "CELL_HOLD", 3600.0)  # only what is queued ends a hold, in these tests


@contextlib.asynccontextmanager
async def _writing(ws: _Socket, owed: str | None = None) -> AsyncIterator[ChannelConnection]:
    """A connection whose writer runs (``owed``: a request whose reply this connection waits for), closed and
    its writer finished on the way out."""
    conn = _connection(ws)
    if owed is not None:
        conn.session.frontends.expect_reply(owed, conn)
    writer = asyncio.get_running_loop().create_task(conn._write())
    yield conn
    conn.close_soon(1000, "")
    await asyncio.wait_for(writer, GUARD)


@pytest.mark.usefixtures("no_expiry")
@pytest.mark.parametrize("direct", [True, False])
async def test_a_quick_cell_goes_out_in_one_write_once_its_idle_and_reply_are_queued(direct: bool) -> None:
    ws = _Socket(direct)
    async with _writing(ws, owed="cell") as conn:  # this connection asked: the reply is owed to it
        conn.deliver(_iopub("status", {"execution_state": "busy"}, 1))
        conn.deliver(_iopub("execute_input", {"code": "1+1", "execution_count": 1}, 2))
        conn.deliver(_iopub("execute_result", {"data": {"text/plain": "2"}, "execution_count": 1}, 3))
        conn.deliver(_iopub("status", {"execution_state": "idle"}, 4, cell="other"))  # another request's idle
        await _turns()
        conn.deliver(_iopub("status", {"execution_state": "idle"}, 5))
        await _turns()
        assert ws.writes == ws.sends == []  # idle, but the reply is still owed
        conn.session.frontends.dispatch(_reply(6))
        await wait_for(lambda: ws.writes or ws.sends)
        assert _written(ws, direct) == [6]


@pytest.mark.usefixtures("no_expiry")
async def test_a_cell_of_another_frontend_goes_out_at_its_idle() -> None:
    ws = _Socket(direct=True)
    async with _writing(ws) as conn:
        conn.deliver(_iopub("status", {"execution_state": "busy"}, 1))
        conn.deliver(_iopub("stream", {"name": "stdout", "text": "hi"}, 2))
        await _turns()
        assert ws.writes == []
        conn.deliver(_iopub("status", {"execution_state": "idle"}, 3))  # no reply comes here: this is the end
        await wait_for(lambda: ws.writes)
        assert _written(ws, True) == [3]


@pytest.mark.usefixtures("no_expiry")
async def test_a_writes_worth_of_output_ends_the_hold() -> None:
    ws = _Socket(direct=True)
    async with _writing(ws) as conn:
        conn.deliver(_iopub("status", {"execution_state": "busy"}, 0))
        for n in range(1, channels.BATCH_MESSAGES):
            conn.deliver(_iopub("stream", {"name": "stdout", "text": f"{n}\n"}, n))
        await wait_for(lambda: ws.writes)  # a cell that prints a lot streams it, hold or not
        assert _written(ws, True) == [channels.BATCH_MESSAGES]


async def test_a_lone_busy_is_written_all_the_same() -> None:
    ws = _Socket(direct=True)
    conn = _connection(ws)
    writer = asyncio.get_running_loop().create_task(conn._write())
    conn.deliver(_iopub("status", {"execution_state": "busy"}, 1))
    await wait_for(lambda: ws.writes)  # a cell that prints nothing for a while still shows busy
    conn.deliver(_iopub("status", {"execution_state": "busy"}, 2))
    conn.close_soon(1000, "")  # a close does not wait for the busy's company either
    await asyncio.wait_for(writer, GUARD)
    assert [len(frames) for frames in ws.writes] == [1, 1]


@pytest.mark.usefixtures("no_expiry")
async def test_an_input_request_ends_the_hold() -> None:
    ws = _Socket(direct=True)
    async with _writing(ws, owed="cell") as conn:
        conn.deliver(_iopub("status", {"execution_state": "busy"}, 1))
        conn.deliver(_iopub("execute_input", {"code": "input()", "execution_count": 1}, 2))
        await _turns()
        assert ws.writes == []
        header = {"msg_id": "m3", "msg_type": "input_request"}
        content = {"prompt": "", "password": False}
        conn.deliver(KernelMessage(Channel.STDIN, header, {"msg_id": "cell"}, {}, content))
        await wait_for(lambda: ws.writes)  # the cell waits for its user: the prompt goes out now
        assert _written(ws, True) == [3]
