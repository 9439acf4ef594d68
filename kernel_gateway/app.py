"""The FastAPI application: routes, error handling, and the lifespan that owns the session manager."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from notebook_state.manager import SessionManager

from . import __version__, errors
from .deps import Gateway
from .limits import BodySizeLimit
from .routes import channels, execute, jupyter, ops, sessions
from .settings import ENV_PREFIX, Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        manager = SessionManager(settings, ENV_PREFIX)
        gw = Gateway(settings=settings, manager=manager)
        gw.metrics.bind(lambda: len(manager.sessions), lambda: manager.pool.ready_count)
        app.state.gateway = gw
        await manager.start()
        log.info("gateway ready to serve", extra={"pool_size": settings.pool_size, "kernel": settings.kernel_name})
        try:
            yield
        finally:
            gw.draining = True
            manager.draining = True
            await manager.wait_idle(settings.shutdown_grace)
            await manager.close()
            log.info("gateway stopped")

    app = FastAPI(
        title="Serverless Kernel Gateway",
        version=__version__,
        description="Jupyter kernels over HTTP: the Jupyter Kernel Gateway API and a stateless REST face.",
        lifespan=lifespan,
    )
    errors.install(app)
    app.add_middleware(BodySizeLimit, max_body_size=settings.max_body_size)
    for module in (ops, jupyter, channels, execute, sessions):
        app.include_router(module.router)
    return app
