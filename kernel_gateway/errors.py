"""Every error leaves the service as JSON: ``{"reason": <HTTP reason>, "message": <what is wrong>}``.

``reason`` and ``message`` are the fields jupyter_server's GatewayClient reads from a gateway's error body.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .kernels.kernel import KernelStartFailed
from .responses import JSONResponse
from .sessions import errors as state_errors

log = logging.getLogger(__name__)

_STATUS: dict[type[state_errors.StateError], int] = {
    state_errors.SessionNotFound: 404,
    state_errors.KernelSpecNotFound: 404,
    state_errors.SessionExists: 409,
    state_errors.InvalidSessionId: 400,
    state_errors.Draining: 503,
    state_errors.ReplicaFull: 503,
    state_errors.TenantSessionLimit: 429,
    state_errors.UntrustedOwner: 502,
    KernelStartFailed: 503,
    state_errors.LeaseLost: 409,
    state_errors.StoreDown: 503,
    state_errors.CheckpointRejected: 409,
    state_errors.OwnedElsewhere: 421,
    state_errors.Misdirected: 421,
    state_errors.LeaseUncertain: 503,
    state_errors.OwnerUnreachable: 503,
}

RETRY_AFTER = "1"
"""Seconds a client should wait before retrying a 503: a lease settles within about one lease TTL."""


def status_of(exc: state_errors.StateError) -> int:
    """The HTTP status that answers a session-layer error (the same for a request and a WebSocket handshake)."""
    return _STATUS.get(type(exc), 400)


def error_body(status: int, message: str, **extra: Any) -> dict[str, Any]:
    return {"reason": HTTPStatus(status).phrase, "message": message, **extra}


def error_response(
    request: Request, status: int, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    gateway = getattr(request.app.state, "gateway", None)
    if gateway is not None:
        gateway.metrics.errors.labels(str(status)).inc()
    return JSONResponse(error_body(status, message, **extra), status_code=status, headers=headers)


def _describe(errors: list[dict[str, Any]]) -> str:
    parts = []
    for e in errors:
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return "; ".join(parts)


def install(app: FastAPI) -> None:
    @app.exception_handler(state_errors.StateError)
    async def _state_error(request: Request, exc: state_errors.StateError) -> JSONResponse:
        status = status_of(exc)
        headers = {"Retry-After": RETRY_AFTER} if status == 503 else None
        return error_response(request, status, str(exc), headers=headers, **getattr(exc, "details", {}))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
        return error_response(request, 422, _describe(details), detail=details)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).description
        return error_response(request, exc.status_code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(request, 500, f"internal error: {type(exc).__name__}")
