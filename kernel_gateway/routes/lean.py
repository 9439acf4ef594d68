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
it and FastAPI's per-request wrapping (two exit stacks and an exception wrapper). A ``Lane`` in front of the
app's middleware stack spares it the ten middleware layers too (each wraps the request and every message it
sends; together ~0.1 ms of CPU per request, measured): it takes only what none of them would act on but to name
the replica, names it itself, and hands anything that goes wrong back to the whole stack, whose handlers answer.

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
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..auth import authenticate, remember
from ..browsers import BrowserGuard, refusal
from ..deps import Gateway, require_auth
from ..limits import BodySizeLimit
from ..peers import REPLICA_HEADER, ReplicaHeader

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
_RAISE = "skg.lean.raise"
"""What went wrong on a request in a lane before its answer started: raised again by the shortcut inside the
app's whole middleware stack, so that the app's own handlers answer it as they would have."""


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
        raised = scope.pop(_RAISE, None)
        if raised is not None:
            raise raised
        body = await readable(_whole_body(receive))  # FastAPI reads it first too: its errors come before 401
        response = await self.route.lean(Request(scope, _replay(body, receive), send), body)
        if response is None:
            scope[_FALLBACK] = True
            await scope["router"](scope, _replay(body, receive), send)
            return
        await response(scope, receive, send)

    async def take(self, scope: Scope, receive: Receive, send: Send, stack: ASGIApp, named: bool) -> None:
        """``handle`` from a lane, outside the app's middleware: an error before the answer starts goes back
        into ``stack`` (raised there again, for its handlers), as does a request the lean route will not serve;
        ``named``: the answer names the replica, as ``ReplicaHeader`` would."""
        body = b""
        try:
            body = await readable(_whole_body(receive))
            response = await self.route.lean(Request(scope, _replay(body, receive), send), body)
        except Exception as exc:
            scope[_RAISE] = exc
            await stack(scope, _replay(body, receive), send)
            return
        if response is None:
            scope[_FALLBACK] = True
            await stack(scope, _replay(body, receive), send)
            return
        gateway = getattr(scope["app"].state, "gateway", None)
        if named and gateway is not None:
            response.raw_headers.append((_REPLICA, str(gateway.manager.replica_id).encode()))
        await response(scope, receive, send)


_REPLICA = REPLICA_HEADER.encode()


class Lane:
    """In front of an app's middleware stack: a plain ``POST`` to a shortcut's path goes straight to it.

    Taken only when no middleware would act on the request but to name the replica: a declared length within
    the body limit (no chunked body to count), a host and origin the browser guard lets through, no telemetry
    for FastAPI to record. Built only for an app whose middleware are all ones it knows (``around``)."""

    def __init__(
        self, stack: ASGIApp, shortcuts: dict[str, Shortcut], guard: BrowserGuard | None, limit: int, named: bool
    ) -> None:
        self.stack = stack
        self.shortcuts = shortcuts
        self.guard = guard
        self.limit = limit
        self.named = named

    @classmethod
    def around(cls, app: FastAPI, stack: ASGIApp) -> ASGIApp:
        """``stack`` with a lane in front, or ``stack`` alone when the app has a middleware the lane does not
        know (it could not tell which requests that one would act on) or a body limit of FastAPI's own."""
        guard, limit, named = None, 2**63, False
        for middleware in app.user_middleware:
            kind: object = middleware.cls
            args: tuple[Any, ...] = middleware.args
            kwargs: dict[str, Any] = middleware.kwargs
            if kind is BrowserGuard:
                guard = BrowserGuard(stack, *args, **kwargs)
            elif kind is BodySizeLimit:
                value = kwargs.get("max_body_size", args[0] if args else None)
                if not isinstance(value, int):
                    return stack
                limit = min(limit, value)
            elif kind is ReplicaHeader:
                named = True
            else:
                return stack
        shortcuts = {r.path: r for r in app.router.routes if isinstance(r, Shortcut)}
        if not shortcuts or getattr(app, "max_body_size", None) is not None:
            return stack
        return cls(stack, shortcuts, guard, limit, named)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        shortcut = self.shortcuts.get(scope["path"]) if scope["type"] == "http" else None
        if shortcut is not None and self._takes(scope, shortcut):
            await shortcut.take(scope, receive, send, self.stack, self.named)
        else:
            await self.stack(scope, receive, send)

    def _takes(self, scope: Scope, shortcut: Shortcut) -> bool:
        if shortcut.matches(scope)[0] is not Match.FULL or "fastapi.telemetry" in scope:
            return False
        length = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                return False
        if length is None or not length.isdigit() or int(length) > self.limit:
            return False
        guard = self.guard
        return guard is None or refusal(scope["headers"], guard.hosts, guard.origins) is None


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
    ``app.include_router(router)``; the OpenAPI document does not see them), and a lane to them in front of
    the app's middleware stack (built when the app first serves, with the middleware it has then)."""
    for route in router.routes:
        if isinstance(route, LeanRoute):
            app.router.routes.insert(0, Shortcut(route))
    build = app.build_middleware_stack

    def build_with_lane() -> ASGIApp:
        return Lane.around(app, build())

    app.build_middleware_stack = build_with_lane  # type: ignore[method-assign]
