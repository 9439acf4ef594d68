"""Browsers on this machine: when the gateway runs on loopback without a token, a web page must not drive it.

Any page a local browser opens can send requests to 127.0.0.1; with no token to present, two checks stand in:

- Host allow-list: a DNS-rebinding page reaches the gateway under its own host name (``evil.example``
  resolved to 127.0.0.1), which the Host header names. Only loopback names (and ``--allowed-hosts``) pass.
- Origin check: a cross-site page's WebSocket or fetch carries its Origin. Only the gateway's own loopback
  origins (and ``--allowed-origins``) pass; clients that are not browsers send none.

With a token (or a tenants file) the token decides, as a page cannot read it, and these checks stay off.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

import orjson

from .errors import error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_OPEN_PATHS = frozenset({"/healthz", "/readyz"})


@functools.lru_cache(maxsize=256)  # every request without a token asks about its Host: a few names, over and over
def host_name(value: str) -> str:
    """The host part of a Host header or URL authority, without port or IPv6 brackets, lower case."""
    try:
        return (urlsplit("//" + value).hostname or "").lower()
    except ValueError:
        return ""


def refusal(headers: Iterable[tuple[bytes, bytes]], hosts: frozenset[str], origins: frozenset[str]) -> str | None:
    """Why a request may come from a web page that is not the gateway's own, or None."""
    host = origin = None
    for name, value in headers:
        if name == b"host":
            host = value.decode("latin-1")
        elif name == b"origin":
            origin = value.decode("latin-1")
    if host is None or host_name(host) not in hosts:
        return f"host {host!r} is not this gateway's (see --allowed-hosts)"
    if origin is None or origin.rstrip("/").lower() in origins:
        return None
    if origin == "null":
        return "an opaque origin (a sandboxed page or a file) may not use this gateway"
    parts = urlsplit(origin)
    if parts.scheme in ("http", "https") and host_name(parts.netloc) in hosts:
        return None
    return f"origin {origin!r} may not use this gateway (see --allowed-origins)"


class BrowserGuard:
    """Refuses (403) requests and WebSockets that a web page on another site or host name sent."""

    def __init__(self, app: ASGIApp, hosts: Iterable[str] = (), origins: Iterable[str] = ()) -> None:
        self.app = app
        self.hosts = LOOPBACK_HOSTS | {host_name(h) or h.lower() for h in hosts}
        self.origins = frozenset(o.rstrip("/").lower() for o in origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope.get("path") in _OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        why = refusal(scope.get("headers", []), self.hosts, self.origins)
        if why is None:
            await self.app(scope, receive, send)
            return
        body = orjson.dumps(error_body(403, why))
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 403, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await receive()  # the handshake's websocket.connect, before the answer to it
        if "websocket.http.response" in scope.get("extensions", {}):
            await send({"type": "websocket.http.response.start", "status": 403, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1008})
