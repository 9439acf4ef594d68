"""A short way into a hot JSON route's endpoint, for the request FastAPI would take as it is.

FastAPI's request handler costs about a fifth of the service's CPU per ``POST /execute`` (profiled): it parses
the content type with ``email.message``, decodes the body with the standard ``json``, solves the dependency
graph (the caller, the gateway, the body model) and keeps telemetry state, for every request. ``LeanRoute``
serves the plain request itself: an ``application/json`` body that orjson decodes and the body model accepts,
from a caller whose token (or inter-replica claim) holds. It then calls the endpoint as FastAPI would have.
Everything else (no token, another content type, a body that does not decode or validate, a body that fails
to arrive) goes FastAPI's whole way, so each error is FastAPI's own answer, word for word; and the route is an
``APIRoute`` built from the same endpoint signature, so the OpenAPI document does not change.

A ``Shortcut`` in front of the app's routes also spares the plain request the matching of every route before
it and FastAPI's per-request wrapping (two exit stacks and an exception wrapper; the app's exception handlers
and middleware still surround it).

Only the success path is short, and it accepts nothing FastAPI would refuse: orjson decodes a subset of what
``json`` does (no NaN, no lone surrogates, UTF-8 only) to the same values, and the model validates the decoded
object in Python mode, as FastAPI does.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, get_type_hints

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.datastructures import URLPath
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, NoMatchFound
from starlette.types import Message, Receive, Scope, Send

from ..auth import authenticate, remember
from ..deps import Gateway, require_auth

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


async def readable(read: Awaitable[bytes]) -> bytes:
    """A body, or the error FastAPI's handler answers when it cannot be read."""
    try:
        return await read
    except HTTPException:
        raise  # the body size limit's 413, as FastAPI lets it through
    except Exception as exc:
        raise HTTPException(400, "There was an error parsing the body") from exc  # FastAPI's words


async def _whole_body(receive: Receive) -> bytes:
    # Without Starlette's stream generator: the shortcut replays the body to whoever reads it next.
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.request":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(chunks)
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()


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

    async def lean(self, request: Request, raw: bytes | None = None) -> Response | None:
        """The endpoint's response to a plain request whose body is ``raw`` (read from the request when None);
        None when FastAPI must answer (the body may have been read by then: Starlette keeps it)."""
        app = request.app
        gw: Gateway = app.state.gateway
        if app.dependency_overrides or not is_json(request.headers.get("content-type")):
            return None
        caller = authenticate(request, gw.tenants, gw.peers)
        if caller is None:
            return None
        if raw is None:
            raw = await readable(request.body())
        body = decode(self.body_model, raw)
        if body is None:
            return None
        remember(request, caller)
        response: Response = await self.endpoint(body=body, request=request, gw=gw)
        return response

    def get_route_handler(self) -> Handler:
        full = super().get_route_handler()

        async def handler(request: Request) -> Response:
            if _FALLBACK not in request.scope:
                response = await self.lean(request)
                if response is not None:
                    return response
            return await full(request)

        return handler


_FALLBACK = "skg.lean.fallback"
"""Set on a request a shortcut handed back to the router: its route answers it FastAPI's whole way."""


class Shortcut(BaseRoute):
    """First among an app's routes: ``POST <path>`` goes straight to its lean route, without matching the
    routes before it and without FastAPI's per-request wrapping (exception handlers and middleware stay
    around it). A request the lean route will not serve goes back to the router, body and all, and from
    there to the same route, FastAPI's way."""

    include_in_schema = False

    def __init__(self, route: LeanRoute) -> None:
        self.route = route
        self.path = self.path_format = route.path
        self.methods = frozenset(route.methods or ())

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if (
            scope["type"] == "http"
            and scope["path"] == self.path
            and scope["method"] in self.methods
            and not scope.get("root_path")
            and _FALLBACK not in scope
        ):
            return Match.FULL, {"endpoint": self.route.endpoint, "path_params": {}}
        return Match.NONE, {}

    def url_path_for(self, name: str, /, **path_params: Any) -> URLPath:
        raise NoMatchFound(name, path_params)  # the route itself names this path

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await readable(_whole_body(receive))  # FastAPI reads it first too: its errors come before 401
        response = await self.route.lean(Request(scope, _replay(body, receive), send), body)
        if response is None:
            scope[_FALLBACK] = True
            await scope["router"](scope, _replay(body, receive), send)
            return
        await response(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` for a body already read: the body once, then the connection's own (a disconnect)."""
    pending = True

    async def again() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again


def install_shortcuts(app: FastAPI, router: APIRouter) -> None:
    """Put a shortcut to each of ``router``'s lean routes first among ``app``'s routes (call after
    ``app.include_router(router)``; the OpenAPI document does not see them)."""
    for route in router.routes:
        if isinstance(route, LeanRoute):
            app.router.routes.insert(0, Shortcut(route))
