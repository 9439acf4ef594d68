"""A recording reverse proxy for tests: what reaches a gateway, and a way to cut its WebSockets.

An in-process aiohttp server on 127.0.0.1 that forwards every HTTP request and WebSocket to ``upstream`` and
records each one (method and path; ``WS`` for a WebSocket) with the close code of each WebSocket. ``cut()``
closes the open WebSockets from the middle, as Knative's queue-proxy does at its timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
     "transfer-encoding", "upgrade", "host", "content-length", "content-encoding"}
)  # fmt: skip


@dataclass
class Pair:
    """One proxied WebSocket: the client side (jupyter_server) and the gateway side."""

    client: web.WebSocketResponse
    upstream: aiohttp.ClientWebSocketResponse
    client_close_code: int | None = None  # the code the client closed with (None: cut here)
    cut: bool = False
    finished: asyncio.Event = field(default_factory=asyncio.Event)  # both sides closed, code recorded


@dataclass
class RecordingProxy:
    upstream: str
    requests: list[tuple[str, str]] = field(default_factory=list)
    sockets: list[Pair] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None

    @property
    def open_sockets(self) -> int:
        return sum(1 for pair in self.sockets if not pair.finished.is_set())

    async def start(self) -> str:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        await self.cut()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def cut(self) -> None:
        """Close every open WebSocket from the middle (code 1001 to the client), as a proxy timeout would;
        return once they are closed. Sockets opened meanwhile (a client reconnecting) are left alone."""
        for pair in list(self.sockets):
            if not pair.finished.is_set():
                pair.cut = True
                await pair.client.close(code=1001, message=b"proxy timeout")
                await pair.upstream.close()
                await asyncio.wait_for(pair.finished.wait(), 30)

    def _headers(self, request: web.Request) -> dict[str, str]:
        return {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        target = self.upstream + request.rel_url.path_qs
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request, target)
        self.requests.append((request.method, request.path))
        body = await request.read()
        async with self._session.request(
            request.method, target, headers=self._headers(request), data=body or None, allow_redirects=False
        ) as upstream:
            payload = await upstream.read()
            headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
            return web.Response(status=upstream.status, body=payload, headers=headers)

    async def _websocket(self, request: web.Request, target: str) -> web.StreamResponse:
        assert self._session is not None
        self.requests.append(("WS", request.path))
        headers = {k: v for k, v in self._headers(request).items() if not k.lower().startswith("sec-websocket")}
        upstream = await self._session.ws_connect("ws" + target[len("http") :], headers=headers, max_msg_size=0)
        client = web.WebSocketResponse(max_msg_size=0)
        await client.prepare(request)
        pair = Pair(client, upstream)
        self.sockets.append(pair)

        async def pump(src: web.WebSocketResponse | aiohttp.ClientWebSocketResponse, dst: object) -> None:
            async for msg in src:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await dst.send_str(msg.data)  # type: ignore[attr-defined]
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    await dst.send_bytes(msg.data)  # type: ignore[attr-defined]

        to_gateway = asyncio.create_task(pump(client, upstream))
        to_client = asyncio.create_task(pump(upstream, client))
        try:
            done, _ = await asyncio.wait({to_gateway, to_client}, return_when=asyncio.FIRST_COMPLETED)
            if to_gateway in done and not pair.cut:  # the client closed it, with this code
                pair.client_close_code = client.close_code
            for task in (to_gateway, to_client):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                    await task
            await upstream.close()
            if not client.closed:
                await client.close()
        finally:
            pair.finished.set()
        return client
