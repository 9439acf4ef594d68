"""The stateless REST face: ``POST /execute`` and its Server-Sent Events twin."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from ..auth import caller_of
from ..deps import Authorized, Gateway, GatewayDep
from ..forward import on_owner
from ..models import ERROR_RESPONSES, ExecuteReply, ExecuteRequest
from ..responses import JSONResponse
from ..sessions.execution import ExecutionResult
from ..sessions.session import Session
from ..types import JSONDict
from .lean import LeanRoute

# LeanRoute: the plain request skips FastAPI's request handler (routes/lean.py); the API stays the same.
router = APIRouter(tags=["execute"], dependencies=[Authorized], responses=ERROR_RESPONSES, route_class=LeanRoute)


def _timeout(gw: Gateway, body: ExecuteRequest) -> float:
    return min(body.timeout or gw.settings.execution_timeout, gw.settings.max_execution_timeout)


def _record(gw: Gateway, result: ExecutionResult, started: float, mode: str) -> None:
    gw.metrics.executed(result.status.value, mode, time.perf_counter() - started)
    if result.kernel_restarted:
        gw.metrics.kernel_restarts.labels("died" if result.status.value == "error" else "timeout").inc()


async def _run(
    gw: Gateway, request: Request, body: ExecuteRequest, here: Callable[[Session], Awaitable[Response]]
) -> Response:
    if body.session is None:
        caller = caller_of(request)
        await gw.admit(caller)
        return await here(await gw.manager.create(tenant=caller.tenant))
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


DROPPED_NOTICE = "\n[outputs dropped: the client reads slower than the cell writes; the reply has them all]\n"


class EventQueue:
    """SSE events waiting for the client, bounded in bytes: while the client is that far behind, outputs are
    dropped (with one notice each time dropping starts). The final reply always goes in: it is bounded by the
    output cap and holds every output the cell kept."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.bytes = 0
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._dropping = False

    def output(self, output: JSONDict) -> None:
        event = _event("output", output)
        if self.bytes + len(event) > self.limit:
            if not self._dropping:
                self._dropping = True
                self.put(_event("output", {"output_type": "stream", "name": "stderr", "text": DROPPED_NOTICE}))
            return
        self._dropping = False
        self.put(event)

    def put(self, event: bytes | None) -> None:
        self.bytes += len(event or b"")
        self._queue.put_nowait(event)

    async def get(self) -> bytes | None:
        event = await self._queue.get()
        self.bytes -= len(event or b"")
        return event


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
        queue = EventQueue(int(gw.settings.stream_queue_bytes))

        async def run() -> None:
            try:
                result = await gw.manager.execute(session, body.code, _timeout(gw, body), on_output=queue.output)
                _record(gw, result, started, "stream")
                queue.put(_event("reply", result.to_json()))
            except Exception as exc:  # the stream has started: errors travel as an event
                queue.put(_event("error", {"reason": type(exc).__name__, "message": str(exc)}))
            finally:
                queue.put(None)

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
