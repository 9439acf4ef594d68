"""The stateless REST face: ``POST /execute`` and its Server-Sent Events twin."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import orjson
from fastapi import APIRouter
from starlette.responses import StreamingResponse

from notebook_state.execution import ExecutionResult
from notebook_state.session import Session
from notebook_state.types import JSONDict

from ..deps import Authorized, GatewayDep
from ..models import ExecuteReply, ExecuteRequest
from ..responses import JSONResponse

router = APIRouter(tags=["execute"], dependencies=[Authorized])


async def _session_for(gw: GatewayDep, request: ExecuteRequest) -> Session:
    if request.session is None:
        return await gw.manager.create()
    return gw.manager.get(request.session)


def _timeout(gw: GatewayDep, request: ExecuteRequest) -> float:
    limit = gw.settings.max_execution_timeout
    return min(request.timeout or gw.settings.execution_timeout, limit)


def _record(gw: GatewayDep, result: ExecutionResult, started: float, mode: str) -> None:
    gw.metrics.executions.labels(result.status.value).inc()
    gw.metrics.execution_seconds.labels(mode).observe(time.perf_counter() - started)
    if result.kernel_restarted:
        gw.metrics.kernel_restarts.labels("died" if result.status.value == "error" else "timeout").inc()


@router.post(
    "/execute",
    response_model=ExecuteReply,
    summary="Run code in a session and return its outputs",
    description="Without `session`, a new session is created on a warm kernel and its id returned. "
    "Outputs are nbformat v4 outputs. A cell over its timeout is interrupted; one that does not stop "
    "has its kernel replaced, and the reply says so.",
)
async def execute(request: ExecuteRequest, gw: GatewayDep) -> JSONResponse:
    started = time.perf_counter()
    session = await _session_for(gw, request)
    result = await gw.manager.execute(session.id, request.code, _timeout(gw, request))
    _record(gw, result, started, "json")
    return JSONResponse(result.to_json())


def _event(name: str, data: JSONDict) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


@router.post(
    "/execute/stream",
    summary="Run code and stream its outputs as Server-Sent Events",
    description="Events: `session` (the id, first), `output` (one nbformat output each, as it happens), "
    "then `reply` (the same body as `POST /execute`). Connection drops do not stop the cell.",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def execute_stream(request: ExecuteRequest, gw: GatewayDep) -> StreamingResponse:
    started = time.perf_counter()
    session = await _session_for(gw, request)
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def run() -> None:
        try:
            result = await gw.manager.execute(
                session.id,
                request.code,
                _timeout(gw, request),
                on_output=lambda output: queue.put_nowait(_event("output", output)),
            )
            _record(gw, result, started, "stream")
            queue.put_nowait(_event("reply", result.to_json()))
        except Exception as exc:  # the stream has started: errors travel as an event
            queue.put_nowait(_event("error", {"reason": type(exc).__name__, "message": str(exc)}))
        finally:
            queue.put_nowait(None)

    task = asyncio.get_running_loop().create_task(run())

    async def events() -> AsyncIterator[bytes]:
        yield _event("session", {"session": session.id})
        while True:
            item = await queue.get()
            if item is None:
                break
            yield item
        await task

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
