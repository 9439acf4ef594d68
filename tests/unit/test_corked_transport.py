"""A response's head waits for its body (kernel_gateway.server.CorkedTransport): one write per small response,
and a head never waits past the current turn of the event loop."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from starlette.responses import PlainTextResponse, StreamingResponse

from kernel_gateway.server import CorkedTransport, header_timeout_protocol


class Recording(asyncio.Transport):
    """Keeps what reaches the socket, one entry per system call the real transport would make."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.calls.append(bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        self.calls.append(b"".join(bytes(d) for d in list_of_data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


async def test_head_and_body_leave_together() -> None:
    raw = Recording()
    corked = CorkedTransport(raw, asyncio.get_running_loop())
    corked.write(b"HTTP/1.1 200 OK\r\n\r\n")
    assert raw.calls == []
    corked.write(b"body")
    corked.write(b"more")
    assert raw.calls == [b"HTTP/1.1 200 OK\r\n\r\nbody", b"more"]
    await asyncio.sleep(0)  # the flush scheduled for the head finds nothing left
    assert raw.calls == [b"HTTP/1.1 200 OK\r\n\r\nbody", b"more"]


async def test_a_head_without_a_body_leaves_at_the_end_of_the_turn() -> None:
    raw = Recording()
    corked = CorkedTransport(raw, asyncio.get_running_loop())
    corked.write(b"HTTP/1.1 200 OK\r\n\r\n")
    await asyncio.sleep(0)
    assert raw.calls == [b"HTTP/1.1 200 OK\r\n\r\n"]
    corked.write(b"later")
    assert raw.calls == [b"HTTP/1.1 200 OK\r\n\r\n", b"later"]


async def test_close_sends_the_head_first_and_a_closed_transport_gets_nothing() -> None:
    raw = Recording()
    corked = CorkedTransport(raw, asyncio.get_running_loop())
    corked.write(b"head")
    corked.close()
    assert raw.calls == [b"head"] and corked.is_closing()
    other = Recording()
    late = CorkedTransport(other, asyncio.get_running_loop())
    late.write(b"head")
    other.closed = True  # the peer went away before the turn ended
    await asyncio.sleep(0)
    assert other.calls == []


async def test_uvicorn_serves_plain_and_streamed_responses_through_it() -> None:
    app = FastAPI()
    released = asyncio.Event()

    @app.get("/plain")
    async def plain() -> PlainTextResponse:
        return PlainTextResponse("x" * 100_000)

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def parts() -> Any:
            await released.wait()  # the body waits until the client has the head
            yield b"first\n"
            yield b"second\n"

        return StreamingResponse(parts())

    sock = socket.create_server(("127.0.0.1", 0))  # listening now: the client's connection waits for uvicorn
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, http=header_timeout_protocol(5.0)))
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    try:
        async with (
            asyncio.timeout(60),
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
        ):
            for _ in range(3):  # keep-alive: each response on the connection gets its own head
                r = await client.get("/plain")
                assert r.status_code == 200 and r.text == "x" * 100_000
                released.clear()
                async with client.stream("GET", "/stream") as s:
                    assert s.status_code == 200
                    released.set()
                    assert await s.aread() == b"first\nsecond\n"
    finally:
        server.should_exit = True
        await task
        sock.close()
