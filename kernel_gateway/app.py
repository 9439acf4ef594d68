"""The FastAPI application: routes, error handling, and the lifespan that owns the store and the sessions."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from notebook_state.signing import Signer, load_or_create_key
from notebook_state.store import LocalStore, RedisStore, StateStore

from . import __version__, errors
from .browsers import BrowserGuard
from .deps import Gateway
from .forward import http_client
from .limits import BodySizeLimit
from .metrics import Metrics
from .peers import PeerAuth, ReplicaHeader
from .routes import channels, execute, jupyter, ops, sessions
from .sessions.manager import SessionManager
from .settings import ENV_PREFIX, Settings, is_loopback

log = logging.getLogger(__name__)


def open_store(settings: Settings) -> tuple[StateStore, bytes]:
    """Redis when configured (replicas share sessions), else the embedded store in the data directory; and the
    signing key (checkpoints are signed with it, the inter-replica key is derived from it)."""
    data_dir = settings.data_dir.resolve()
    store: StateStore
    if settings.redis_url is not None:
        password = settings.redis_password.get_secret_value() if settings.redis_password else None
        store = RedisStore(
            settings.redis_url.get_secret_value(),
            settings.session_ttl,
            password,
            cluster=settings.redis_cluster,
            timeout=settings.store_timeout,
            wait_replicas=settings.redis_wait_replicas,
        )
    else:
        store = LocalStore(data_dir / "store", settings.session_ttl)
    key = settings.signing_key_bytes or load_or_create_key(data_dir / "signing.key")
    return store, key


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store, key = open_store(settings)
        signer = Signer(key)

        def url() -> str:
            listen_url: str | None = getattr(app.state, "listen_url", None)
            return listen_url or settings.public_url(settings.host, settings.port)

        metrics = Metrics()
        manager = SessionManager(settings, ENV_PREFIX, store, signer, url, observer=metrics)
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
    return app
