"""FastAPI dependencies: the one way a route reaches the settings, the sessions, the metrics and its caller."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import httpx
from fastapi import Depends, HTTPException, Request
from starlette.requests import HTTPConnection

from .auth import Caller, authenticate, remember
from .metrics import Metrics
from .peers import PeerAuth
from .placement import Placement
from .sessions.errors import TenantSessionLimit
from .sessions.manager import SessionManager
from .settings import Settings
from .tenants import Tenants
from .trust import PeerAddresses


@dataclass
class Gateway:
    """What one replica holds for the lifetime of its app."""

    settings: Settings
    manager: SessionManager
    http: httpx.AsyncClient
    peers: PeerAuth
    metrics: Metrics = field(default_factory=Metrics)
    draining: bool = False
    placement: Placement = field(init=False)
    tenants: Tenants = field(init=False)

    def __post_init__(self) -> None:
        settings = self.settings
        self.placement = Placement(self.manager, self.manager.replica_id)
        self.tenants = Tenants(
            settings.tenants_file, settings.token_value, settings.tenant_max_sessions, int(settings.kernel_memory_limit)
        )
        self.manager.kernels.memory_limits = self.tenants.kernel_memory_of

    @property
    def peer_addresses(self) -> PeerAddresses:
        """What may be another replica's address (the own URL is known once the socket is bound)."""
        settings = self.settings
        return PeerAddresses(self.manager.url, settings.peer_cidr, settings.peer_url_pattern)

    async def admit(self, caller: Caller) -> None:
        """Refuse a new session past the tenant's cap (its listing is paged, so this reads at most the cap)."""
        cap = self.tenants.get(caller.tenant).max_sessions
        if cap > 0 and len(await self.manager.records(caller.tenant, limit=cap)) >= cap:
            raise TenantSessionLimit(cap)


# Dependencies are ``async def`` even when they await nothing: FastAPI runs a plain ``def`` dependency in a
# worker thread, a hop to a thread and back for every request.


async def gateway(conn: HTTPConnection) -> Gateway:
    gw: Gateway = conn.app.state.gateway
    return gw


GatewayDep = Annotated[Gateway, Depends(gateway)]


async def settings(gw: GatewayDep) -> Settings:
    return gw.settings


async def manager(gw: GatewayDep) -> SessionManager:
    return gw.manager


SettingsDep = Annotated[Settings, Depends(settings)]
ManagerDep = Annotated[SessionManager, Depends(manager)]


async def require_auth(request: Request, gw: GatewayDep) -> Caller:
    # A request another replica forwarded carries that replica's claim (naming the tenant) instead of a token.
    caller = authenticate(request, gw.tenants, gw.peers)
    if caller is None:
        raise HTTPException(
            401,
            "a valid token is required: send 'Authorization: token <token>'",
            headers={"WWW-Authenticate": "token"},
        )
    return remember(request, caller)


Authorized = Depends(require_auth)
CallerDep = Annotated[Caller, Depends(require_auth)]
