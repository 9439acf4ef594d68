"""The FastAPI application: routes, error handling, and the lifespan that owns the store and the sessions."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from . import __version__, errors
from .browsers import BrowserGuard
from .deps import Gateway
from .forward import http_client
from .limits import BodySizeLimit
from .peers import PeerAuth, ReplicaHeader
from .replica import Replica, open_replica
from .routes import channels, execute, jupyter, ops, sessions
from .routes.lean import install_shortcuts
from .settings import Settings, is_loopback

log = logging.getLogger(__name__)


def create_app(settings: Settings, replica: Replica | None = None) -> FastAPI:
    """The app; its lifespan serves ``replica`` (opened, its first kernel booting, before this was imported:
    replica.py), or opens one itself."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        def url() -> str:
            listen_url: str | None = getattr(app.state, "listen_url", None)
            return listen_url or settings.public_url(settings.host, settings.port)

        opened = replica or open_replica(settings, url)
        store, key, metrics, manager = opened.store, opened.key, opened.metrics, opened.manager
        # Its first kernel boots while the rest starts (and the store is reached); the pool fills after it.
        manager.prestart()
        http = http_client(settings)
        peers = PeerAuth.from_signing_key(key, manager.replica_id)
        gw = Gateway(settings=settings, manager=manager, http=http, peers=peers, metrics=metrics)
        gw.metrics.bind(
            lambda: len(manager.sessions),
            lambda: manager.pool.ready_count,
            lambda: sum(1 for s in manager.sessions.values() if s.persistence is not None),
        )
        app.state.gateway = gw
        # Found out before serving: a sandbox named by --sandbox that the platform refuses stops the start here.
        await manager.kernels.sandbox()
        await manager.start()
        log.info(
            "gateway ready to serve",
            extra={"pool_size": settings.pool_size, "kernel": settings.kernel_name, "replica": manager.replica_id,
                   "store": type(store).__name__},
        )  # fmt: skip
        try:
            yield
        finally:
            gw.draining = True
            manager.draining = True
            await manager.wait_idle(settings.shutdown_grace)
            await manager.close()
            await http.aclose()
            await store.close()
            log.info("gateway stopped")

    app = FastAPI(
        title="Serverless Kernel Gateway",
        version=__version__,
        description="Jupyter kernels over HTTP: the Jupyter Kernel Gateway API and a stateless REST face.",
        lifespan=lifespan,
    )
    errors.install(app)
    app.add_middleware(BodySizeLimit, max_body_size=settings.max_body_size)
    app.add_middleware(ReplicaHeader)
    if is_loopback(settings.host) and not (settings.token_value or settings.tenants_file):
        # No token for a web page to lack: Host and Origin tell a page on another site from a local client.
        hosts = [settings.host, *settings.allowed_hosts]
        app.add_middleware(BrowserGuard, hosts=hosts, origins=settings.allowed_origins)
    for module in (ops, jupyter, channels, execute, sessions):
        app.include_router(module.router)
    install_shortcuts(app, execute.router)
    return app
