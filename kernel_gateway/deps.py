"""FastAPI dependencies: the one way a route reaches the settings, the sessions and the metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import httpx
from fastapi import Depends, HTTPException, Request
from starlette.requests import HTTPConnection

from .auth import is_authorized
from .metrics import Metrics
from .peers import PeerAuth, peer_claim
from .placement import Placement
from .sessions.manager import SessionManager
from .settings import Settings


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

    def __post_init__(self) -> None:
        self.placement = Placement(self.manager, self.manager.replica_id)


def gateway(conn: HTTPConnection) -> Gateway:
    gw: Gateway = conn.app.state.gateway
    return gw


GatewayDep = Annotated[Gateway, Depends(gateway)]


def settings(gw: GatewayDep) -> Settings:
    return gw.settings


def manager(gw: GatewayDep) -> SessionManager:
    return gw.manager


SettingsDep = Annotated[Settings, Depends(settings)]
ManagerDep = Annotated[SessionManager, Depends(manager)]


async def require_auth(request: Request, gw: GatewayDep) -> None:
    # A request another replica forwarded carries that replica's claim instead of the user's token.
    if not is_authorized(request, gw.settings) and peer_claim(gw.peers, request) is None:
        raise HTTPException(
            401,
            "a valid token is required: send 'Authorization: token <token>'",
            headers={"WWW-Authenticate": "token"},
        )


Authorized = Depends(require_auth)
