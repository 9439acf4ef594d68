"""A short way into a hot JSON route's endpoint, for the request FastAPI would take as it is.

FastAPI's request handler costs about a fifth of the service's CPU per ``POST /execute`` (profiled): it parses
the content type with ``email.message``, decodes the body with the standard ``json``, solves the dependency
graph (the caller, the gateway, the body model) and keeps telemetry state, for every request. ``LeanRoute``
serves the plain request itself: an ``application/json`` body that orjson decodes and the body model accepts,
from a caller whose token (or inter-replica claim) holds. It then calls the endpoint as FastAPI would have.
Everything else (no token, another content type, a body that does not decode or validate, a body that fails
to arrive) goes FastAPI's whole way, so each error is FastAPI's own answer, word for word; and the route is an
``APIRoute`` built from the same endpoint signature, so the OpenAPI document does not change.

Only the success path is short, and it accepts nothing FastAPI would refuse: orjson decodes a subset of what
``json`` does (no NaN, no lone surrogates, UTF-8 only) to the same values, and the model validates the decoded
object in Python mode, as FastAPI does.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, get_type_hints

import orjson
from fastapi import Request
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from ..auth import authenticate, remember
from ..deps import Gateway, require_auth

LeanEndpoint = Callable[..., Awaitable[Response]]
Handler = Callable[[Request], Coroutine[Any, Any, Response]]

_PARAMETERS = ["body", "request", "gw"]
"""The one endpoint signature a lean route serves: ``(body: <model>, request: Request, gw: GatewayDep)``."""


def is_json(content_type: str | None) -> bool:
    """Plain ``application/json`` (parameters aside): the one content type the short path reads."""
    return content_type is not None and content_type.partition(";")[0].strip().lower() == "application/json"


def decode(model: type[BaseModel], body: bytes) -> BaseModel | None:
    """The body as ``model``, or None when FastAPI's own handling must answer it (it may well refuse it)."""
    if not body:
        return None
    try:
        return model.model_validate(orjson.loads(body))
    except (orjson.JSONDecodeError, ValidationError):
        return None


class LeanRoute(APIRoute):
    """An ``APIRoute`` whose endpoint is ``(body, request, gw)`` behind ``require_auth`` alone (its router's
    dependency); the plain request skips FastAPI's handler, the rest goes through it."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        if list(inspect.signature(endpoint).parameters) != _PARAMETERS:
            raise TypeError(f"a lean route's endpoint takes {_PARAMETERS}: {endpoint.__qualname__}")
        self.body_model: type[BaseModel] = get_type_hints(endpoint)["body"]
        super().__init__(path, endpoint, **kwargs)
        if [d.dependency for d in self.dependencies] != [require_auth]:
            raise TypeError(f"a lean route depends on require_auth alone: {path}")

    def get_route_handler(self) -> Handler:
        full = super().get_route_handler()
        model, endpoint = self.body_model, self.endpoint

        async def handler(request: Request) -> Response:
            app = request.app
            gw: Gateway = app.state.gateway
            if app.dependency_overrides or not is_json(request.headers.get("content-type")):
                return await full(request)
            caller = authenticate(request, gw.tenants, gw.peers)
            if caller is None:
                return await full(request)
            try:
                raw = await request.body()
            except HTTPException:
                raise  # the body size limit's 413, as FastAPI lets it through
            except Exception as exc:
                raise HTTPException(400, "There was an error parsing the body") from exc  # FastAPI's words
            body = decode(model, raw)
            if body is None:
                return await full(request)  # reads the body Starlette kept, and answers as FastAPI does
            remember(request, caller)
            response: Response = await endpoint(body=body, request=request, gw=gw)
            return response

        return handler
