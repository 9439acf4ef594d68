"""Running the app under uvicorn: a listening socket with TCP_NODELAY, and a SIGTERM that drains."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .app import create_app
from .deps import Gateway
from .limits import WS_MAX_MESSAGE
from .replica import Replica, forbid_inspection_by_kernels, listening_socket, run
from .settings import Settings
from .wsserver import BatchingWebSocketProtocol

log = logging.getLogger(__name__)


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol, with a limit on the time a request's headers may take to arrive.

    uvicorn times out idle keep-alive connections only after a response; a client that opens connections and
    trickles headers (slowloris) would otherwise hold them, and a replica's connection slots, for ever.
    """

    header_timeout = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = self.loop.call_later(self.header_timeout, self._too_slow)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._too_slow)

    def on_headers_complete(self) -> None:
        self._stop_header_timer()
        super().on_headers_complete()
        if self.cycle is not None:
            self.cycle.transport = CorkedTransport(self.transport, self.loop)  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()


class CorkedTransport:
    """The transport as one response sees it: its status line and headers wait for the body's first bytes
    (or the end of this turn of the event loop, whichever comes first), so that a small response leaves in
    one write and one TCP segment, not two (uvicorn writes the head and the body separately). The client is
    woken once per response instead of twice, and the service makes one system call fewer."""

    __slots__ = ("_held", "_loop", "_started", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._started = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            self._transport.writelines((held, data))  # one writev
        elif not self._started:
            self._started = True  # the response's head (uvicorn writes it first, in one piece)
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def header_timeout_protocol(seconds: float) -> type[HeaderTimeoutProtocol]:
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"header_timeout": seconds})


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with a drain before it stops.

    On the first SIGTERM the replica keeps listening but takes no new work: new cells and sessions get a
    503 saying it is shutting down, ``/readyz`` fails, and running cells get up to the grace period to
    finish. Only then does uvicorn stop. A second signal stops at once.
    """

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app
        self._drain: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets=sockets)

    def handle_exit(self, sig: int, frame: Any) -> None:
        gw: Gateway | None = getattr(self.app.state, "gateway", None)
        if gw is None or self._loop is None or self._drain is not None:
            super().handle_exit(sig, frame)
            return
        log.info("signal %s: draining", sig)
        gw.draining = True
        gw.manager.draining = True
        loop = self._loop
        loop.call_soon_threadsafe(self._start_drain, gw, sig, frame)

    def _start_drain(self, gw: Gateway, sig: int, frame: Any) -> None:
        self._drain = asyncio.get_running_loop().create_task(self._drain_then_exit(gw, sig, frame))

    async def _drain_then_exit(self, gw: Gateway, sig: int, frame: Any) -> None:
        await gw.manager.wait_idle(gw.settings.shutdown_grace)
        log.info("drained: stopping")
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM:
            # uvicorn re-raises captured signals on exit; a completed drain is a clean exit (status 0).
            self._captured_signals.remove(sig)


def serve(settings: Settings) -> None:
    """Serve until stopped: ``skg serve`` (the start order lives in replica.py)."""
    run(settings)


async def serve_replica(settings: Settings, replica: Replica, sock: socket.socket, host: str, port: int) -> None:
    app = create_app(settings, replica)
    app.state.listen_url = settings.public_url(host, port)
    config = uvicorn.Config(
        app,
        log_config=None,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        ws_max_size=WS_MAX_MESSAGE,
        # Kernel messages are small and many: deflating each costs more CPU than it saves (profiled in the
        # WebSocket path), and jupyter_server does not compress its kernel sockets either.
        ws_per_message_deflate=False,
        ws=BatchingWebSocketProtocol,  # a cell's reply and idle go to the socket in one write
        http=header_timeout_protocol(settings.header_timeout),
        timeout_keep_alive=max(1, int(settings.header_timeout)),
        limit_concurrency=settings.limit_concurrency or None,
        timeout_graceful_shutdown=int(settings.shutdown_grace) + 1,
        proxy_headers=True,
        server_header=False,
        # logs.py keeps uvicorn's access log at WARNING (it never logs there): said here as well, uvicorn does not
        # build each request's access-log arguments (client address, quoted path) to throw them away.
        access_log=False,
    )
    server = DrainingServer(config, app)
    # Machine-readable, for tests and scripts that start the service on port 0.
    print(f"SKG_LISTENING http://{host}:{port}", flush=True)
    await server.serve(sockets=[sock])


__all__ = ["DrainingServer", "forbid_inspection_by_kernels", "listening_socket", "serve", "serve_replica"]
