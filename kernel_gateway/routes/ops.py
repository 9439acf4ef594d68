"""Liveness, readiness and metrics: what the platform asks of a replica."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import PlainTextResponse, Response

from notebook_state.store import StoreUnavailable

from ..deps import Authorized, GatewayDep
from ..models import ERROR_RESPONSES
from ..responses import JSONResponse

router = APIRouter(tags=["operations"])

_STORE_PING_TIMEOUT = 1.0


@router.get("/healthz", summary="The process is alive")
async def healthz() -> JSONResponse:
    return JSONResponse({"status": "ok"})


@router.get(
    "/readyz",
    summary="Ready for traffic: a warm kernel is waiting, the state store answers, the replica is not draining",
)
async def readyz(gw: GatewayDep) -> JSONResponse:
    pool = gw.manager.pool
    try:
        await asyncio.wait_for(gw.manager.store.ping(), _STORE_PING_TIMEOUT)
        store = "ok"
    except (StoreUnavailable, TimeoutError) as exc:
        store = f"unreachable: {exc}"
    sandbox = await gw.manager.kernels.sandbox()
    checks = {
        # Reported, not required: a platform without namespaces or root still serves (docs/security.md).
        "sandbox": sandbox.to_json(),
        "draining": gw.draining,
        "pool_ready": pool.ready_count,
        "pool_size": pool.size,
        "store": store,
    }
    ready = not gw.draining and (pool.size == 0 or pool.ready_count > 0) and store == "ok"
    return JSONResponse({"ready": ready, **checks}, status_code=200 if ready else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    dependencies=[Authorized],
    response_class=PlainTextResponse,
    responses={**ERROR_RESPONSES, 200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(gw: GatewayDep) -> Response:
    return Response(generate_latest(gw.metrics.registry), media_type=CONTENT_TYPE_LATEST)
