"""The inter-replica credential: what one replica presents when it forwards a request or relays a WebSocket.

A forwarded request never carries the user's token (the owner's address comes from the store, and a token
must never travel to an address read from there). It carries a claim instead, MAC'd with a key every replica
derives from the checkpoint signing key they already share, so there is no new secret to distribute, and
kernels (which never see the signing key) cannot mint one. The claim names:

- the sending replica, and the replica it meant to reach (``to``: the lease's owner). A receiver with another
  identity answers 421 naming itself, which proves the owner gone from that address (a restart in place);
- the caller's tenant, so the owner serves the request as the tenant the first replica authenticated;
- the method and path it was made for, a time and a nonce: it cannot be moved to another request, and a
  replica accepts each nonce once within the allowed clock skew.

A claim that fails any check is no claim: the request is then an ordinary client request (its own token
decides), never a forwarded one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import HTTPConnection

PEER_HEADER = "x-skg-peer"
"""Carries the claim of a request one replica sent to another."""

REPLICA_HEADER = "x-skg-replica"
"""Names the replica that answered (set on every reply of a forwarded request and on a 421 of a mismatch)."""

KEY_LABEL = b"skg inter-replica v1"
VERSION = "v1"
MAX_SKEW = 30.0
"""Seconds a claim stays valid: it is used at once, so this only has to cover clock skew between replicas."""
_SEEN_LIMIT = 100_000


@dataclass(frozen=True, slots=True)
class PeerClaim:
    """Who sent a forwarded request, for which replica, and on behalf of which tenant."""

    replica_id: str
    tenant: str | None
    to: str | None = None


def derive_key(signing_key: bytes) -> bytes:
    """The inter-replica key: a one-way function of the signing key, so it never equals (or reveals) it."""
    return hmac.new(signing_key, KEY_LABEL, hashlib.sha256).digest()


class PeerAuth:
    """Makes and checks the claims of one replica."""

    def __init__(self, key: bytes, replica_id: str, max_skew: float = MAX_SKEW) -> None:
        if len(key) < 16:
            raise ValueError("an inter-replica key must be at least 16 bytes")
        self._key = key
        self.replica_id = replica_id
        self.max_skew = max_skew
        self._seen: OrderedDict[str, float] = OrderedDict()

    @classmethod
    def from_signing_key(cls, signing_key: bytes, replica_id: str) -> PeerAuth:
        return cls(derive_key(signing_key), replica_id)

    def headers(self, method: str, path: str, tenant: str | None, to: str | None = None) -> dict[str, str]:
        """The header that makes a request to another replica a forwarded one (``to``: the intended owner)."""
        payload = {"r": self.replica_id, "t": tenant, "to": to, "ts": round(time.time(), 3),
                   "n": secrets.token_hex(12)}  # fmt: skip
        body = base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode()
        return {PEER_HEADER: f"{VERSION}.{body}.{self._mac(method, path, body)}"}

    def verify(self, method: str, path: str, headers: Mapping[str, str]) -> PeerClaim | None:
        """The claim of a request, or None when it carries none that holds (wrong MAC, request, age or reuse)."""
        value = headers.get(PEER_HEADER)
        if not value:
            return None
        version, _, rest = value.partition(".")
        body, _, mac = rest.partition(".")
        if version != VERSION or not hmac.compare_digest(mac, self._mac(method, path, body)):
            return None
        try:
            payload = json.loads(base64.urlsafe_b64decode(body))
            sender, tenant, to = payload["r"], payload["t"], payload["to"]
            sent, nonce = float(payload["ts"]), str(payload["n"])
        except (ValueError, KeyError, TypeError, binascii.Error):
            return None
        if not isinstance(sender, str) or not isinstance(tenant, str | None) or not isinstance(to, str | None):
            return None
        now = time.time()
        if abs(now - sent) > self.max_skew or not self._first_use(nonce, now):
            return None
        return PeerClaim(sender, tenant, to)

    def _mac(self, method: str, path: str, body: str) -> str:
        message = f"{VERSION}\n{method.upper()}\n{path}\n{body}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def _first_use(self, nonce: str, now: float) -> bool:
        """Remember nonces for the skew window (bounded), so a captured claim cannot be replayed here."""
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if now - at <= 2 * self.max_skew and len(self._seen) < _SEEN_LIMIT:
                break
            del self._seen[oldest]
        if nonce in self._seen:
            return False
        self._seen[nonce] = now
        return True


_CLAIM = "skg.peer_claim"


def peer_claim(peers: PeerAuth, conn: HTTPConnection) -> PeerClaim | None:
    """The verified claim of a request or WebSocket (checked once per connection: a nonce is single-use)."""
    if _CLAIM not in conn.scope:
        headers = conn.headers
        # Most requests carry no claim: the URL object (~25 us to build) only for those that do.
        if PEER_HEADER in headers:
            method = conn.scope.get("method", "GET")  # a WebSocket handshake is a GET
            conn.scope[_CLAIM] = peers.verify(method, conn.url.path, headers)
        else:
            conn.scope[_CLAIM] = None
    claim: PeerClaim | None = conn.scope[_CLAIM]
    return claim


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]
_START = {"http.response.start", "websocket.http.response.start", "websocket.accept"}


class ReplicaHeader:
    """Names this replica (``x-skg-replica``) on every answer, handshakes included: a replica that forwarded
    a request to an address learns who answers there."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(
        self, scope: Scope, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
    ) -> None:
        gateway = getattr(getattr(scope.get("app"), "state", None), "gateway", None)
        if scope["type"] not in ("http", "websocket") or gateway is None:
            await self.app(scope, receive, send)
            return
        name = (REPLICA_HEADER.encode(), str(gateway.manager.replica_id).encode())

        async def named(message: Message) -> None:
            if message["type"] in _START:
                message = {**message, "headers": [*message.get("headers", []), name]}
            await send(message)

        await self.app(scope, receive, named)
