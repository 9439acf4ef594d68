"""The stateless REST face: ``POST /execute`` and its Server-Sent Events twin."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from ..deps import Authorized, Gateway, GatewayDep
from ..forward import on_owner
from ..models import ExecuteReply, ExecuteRequest
from ..responses import JSONResponse
from ..sessions.execution import ExecutionResult
from ..sessions.session import Session
from ..types import JSONDict

router = APIRouter(tags=["execute"], dependencies=[Authorized])


def _timeout(gw: Gateway, body: ExecuteRequest) -> float:
    return min(body.timeout or gw.settings.execution_timeout, gw.settings.max_execution_timeout)


def _record(gw: Gateway, result: ExecutionResult, started: float, mode: str) -> None:
    gw.metrics.executions.labels(result.status.value).inc()
    gw.metrics.execution_seconds.labels(mode).observe(time.perf_counter() - started)
    if result.kernel_restarted:
        gw.metrics.kernel_restarts.labels("died" if result.status.value == "error" else "timeout").inc()


async def _run(
    gw: Gateway, request: Request, body: ExecuteRequest, here: Callable[[Session], Awaitable[Response]]
) -> Response:
    if body.session is None:
        return await here(await gw.manager.create())
    return await on_owner(gw, request, body.session, here)


@router.post(
    "/execute",
    response_model=ExecuteReply,
    summary="Run code in a session and return its outputs",
    description="Without `session`, a new session is created on a warm kernel and its id returned. "
    "Outputs are nbformat v4 outputs. The reply is sent once the cell's checkpoint committed "
    "(`checkpoint.status: committed`), or says it is `pending` while the store is unreachable. "
    "A cell over its timeout is interrupted; one that does not stop has its kernel replaced.",
)
async def execute(body: ExecuteRequest, request: Request, gw: GatewayDep) -> Response:
    started = time.perf_counter()

    async def here(session: Session) -> Response:
        result = await gw.manager.execute(session, body.code, _timeout(gw, body))
        _record(gw, result, started, "json")
        return JSONResponse(result.to_json())

    return await _run(gw, request, body, here)


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
async def execute_stream(body: ExecuteRequest, request: Request, gw: GatewayDep) -> Response:
    started = time.perf_counter()

    async def here(session: Session) -> Response:
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def run() -> None:
            try:
                result = await gw.manager.execute(
                    session,
                    body.code,
                    _timeout(gw, body),
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

    return await _run(gw, request, body, here)
