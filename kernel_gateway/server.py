"""Running the app under uvicorn: a listening socket with TCP_NODELAY, and a SIGTERM that drains."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import uvicorn
from fastapi import FastAPI

from .app import create_app
from .deps import Gateway
from .settings import Settings

log = logging.getLogger(__name__)


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket. Accepted connections inherit TCP_NODELAY on Linux, so no reply of a
    few hundred bytes waits ~40 ms for Nagle's algorithm (asyncio sets it too; this holds under any loop)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class DrainingServer(uvicorn.Server):
    """uvicorn's server, told of SIGTERM first so the replica stops taking work and reports not-ready
    before uvicorn stops accepting connections and waits for in-flight requests."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app

    def handle_exit(self, sig: int, frame: Any) -> None:
        gw: Gateway | None = getattr(self.app.state, "gateway", None)
        if gw is not None:
            gw.draining = True
            gw.manager.draining = True
        log.info("signal %s: draining", sig)
        super().handle_exit(sig, frame)


def serve(settings: Settings) -> None:
    app = create_app(settings)
    sock = listening_socket(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        app,
        log_config=None,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        ws_max_size=64 * 1024 * 1024,
        timeout_graceful_shutdown=int(settings.shutdown_grace) + 1,
        proxy_headers=True,
        server_header=False,
    )
    server = DrainingServer(config, app)
    # Machine-readable, for tests and scripts that start the service on port 0.
    print(f"SKG_LISTENING http://{host}:{port}", flush=True)
    asyncio.run(server.serve(sockets=[sock]))
