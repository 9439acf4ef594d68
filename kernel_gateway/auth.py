"""Who is calling: a tenant's token, or another replica's claim on a tenant's behalf."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import HTTPConnection

from .peers import PeerAuth, PeerClaim, peer_claim
from .tenants import DEFAULT_TENANT, Tenants

_CALLER = "skg.caller"


@dataclass(frozen=True, slots=True)
class Caller:
    """The tenant a request acts for; sessions of every other tenant do not exist for it."""

    tenant: str = DEFAULT_TENANT
    claim: PeerClaim | None = None  # set when another replica forwarded the request on the tenant's behalf


def presented_token(conn: HTTPConnection) -> str | None:
    """The token a client sent: ``Authorization: token|Bearer <t>``, or ``?token=`` as Jupyter allows."""
    header = conn.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() in ("token", "bearer"):
            return value.strip()
    return conn.query_params.get("token")


def authenticate(conn: HTTPConnection, tenants: Tenants, peers: PeerAuth) -> Caller | None:
    """The caller, or None when the request proves no tenant (401).

    A forwarded request is the tenant its claim names (the first replica checked that tenant's token). Without
    any token configured (loopback only), every request is the default tenant; GatewayClient then still sends
    ``Authorization: token `` with nothing after it, which is fine.
    """
    claim = peer_claim(peers, conn)
    if claim is not None:
        return Caller(claim.tenant or DEFAULT_TENANT, claim)
    if not tenants.enabled:
        return Caller()
    token = presented_token(conn)
    tenant = tenants.identify(token) if token else None
    return Caller(tenant.name) if tenant is not None else None


def remember(conn: HTTPConnection, caller: Caller) -> Caller:
    conn.scope[_CALLER] = caller
    return caller


def caller_of(conn: HTTPConnection) -> Caller:
    """The caller authenticated for this request (the default tenant for the open probes)."""
    caller: Caller = conn.scope.get(_CALLER) or Caller()
    return caller
