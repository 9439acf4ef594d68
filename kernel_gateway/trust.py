"""Which addresses are other replicas: an owner URL read from the store is contacted only if it is one.

Whoever can write to the store could otherwise send a session's traffic (the user's code, the tenant's claim)
anywhere, the cloud's metadata endpoint included. ``--peer-cidr`` (the pod network) or ``--peer-url-pattern``
pin the replicas' addresses; without either, an owner must be an http(s) URL of an IP address on this
replica's own port, never link-local, multicast or unspecified (loopback only when this replica is on
loopback, as several local processes are).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from .sessions.errors import UntrustedOwner

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class PeerAddresses:
    """The addresses this replica accepts as other replicas'."""

    own_url: str
    networks: Sequence[IPNetwork] = ()
    pattern: str | None = None

    def check(self, session_id: str, url: str) -> None:
        """Raise UntrustedOwner unless ``url`` may be a replica's address."""
        why = self.refusal(url)
        if why is not None:
            raise UntrustedOwner(
                f"session {session_id!r}: its owner's address {url!r} in the state store is not a replica "
                f"address ({why}); it was not contacted"
            )

    def refusal(self, url: str) -> str | None:
        try:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            return "not a URL"
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
            return "not a plain http(s) URL"
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            return "a replica's address has no path"
        if self.pattern is not None and not re.fullmatch(self.pattern, url.rstrip("/")):
            return "it does not match --peer-url-pattern"
        try:
            address = ipaddress.ip_address(parts.hostname)
        except ValueError:
            return None if self.pattern is not None else "a host name (set --peer-url-pattern to allow names)"
        if self.networks:
            return None if any(address in net for net in self.networks) else "it is outside --peer-cidr"
        if self.pattern is not None:
            return None
        if address.is_link_local or address.is_multicast or address.is_unspecified or address.is_reserved:
            return "a link-local, multicast or reserved address"
        own = urlsplit(self.own_url)
        try:
            own_loopback = ipaddress.ip_address(own.hostname or "").is_loopback
        except ValueError:
            own_loopback = own.hostname == "localhost"
        if own_loopback:
            return None if address.is_loopback else "this replica is on loopback, the owner is not"
        if address.is_loopback:
            return "a loopback address"
        return None if port == (own.port or 80) else f"port {port} is not this replica's port {own.port}"
