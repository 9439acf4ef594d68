"""Token authentication for HTTP and WebSocket requests."""

from __future__ import annotations

import hmac

from starlette.requests import HTTPConnection

from .settings import Settings


def presented_token(conn: HTTPConnection) -> str | None:
    """The token a client sent: ``Authorization: token|Bearer <t>``, or ``?token=`` as Jupyter allows."""
    header = conn.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() in ("token", "bearer"):
            return value.strip()
    return conn.query_params.get("token")


def is_authorized(conn: HTTPConnection, settings: Settings) -> bool:
    expected = settings.token_value
    if not expected:
        # Auth is off (loopback only). GatewayClient still sends "Authorization: token " then: accept it.
        return True
    token = presented_token(conn)
    return token is not None and hmac.compare_digest(token.encode(), expected.encode())
