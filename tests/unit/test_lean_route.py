"""The short path into ``POST /execute`` (kernel_gateway.routes.lean) answers every request exactly as FastAPI's
own handler does: the same app twice, one route lean and one stock, given the same requests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import fastapi.routing
import httpx
import pytest
from fastapi import APIRouter, FastAPI, HTTPException, Request
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.middleware.gzip import GZipMiddleware
from starlette.responses import Response

from kernel_gateway import errors
from kernel_gateway.auth import Caller, caller_of
from kernel_gateway.browsers import BrowserGuard
from kernel_gateway.deps import Authorized, GatewayDep, require_auth
from kernel_gateway.limits import BodySizeLimit
from kernel_gateway.metrics import Metrics
from kernel_gateway.models import ExecuteRequest
from kernel_gateway.peers import REPLICA_HEADER, PeerAuth, ReplicaHeader
from kernel_gateway.responses import JSONResponse
from kernel_gateway.routes import execute
from kernel_gateway.routes.lean import Lane, LeanRoute, Shortcut, decode, install_shortcuts, is_json
from kernel_gateway.sessions.errors import Draining, SessionNotFound
from kernel_gateway.tenants import DEFAULT_TENANT, Tenants

TOKEN = "lean-route-token"
LIMIT = 4096


@dataclass
class Manager:
    replica_id: str


@dataclass
class Holder:
    """What a lean route, ``require_auth``, the error handlers and ``ReplicaHeader`` read of the gateway."""

    tenants: Tenants
    peers: PeerAuth
    metrics: Metrics
    manager: Manager


RAISES: dict[str, Exception] = {
    "raise: not found": SessionNotFound("s-1"),
    "raise: draining": Draining(),
    "raise: http": HTTPException(418, "short and stout"),
    "raise: unexpected": RuntimeError("boom"),
}


async def echo(body: ExecuteRequest, request: Request, gw: GatewayDep) -> Response:
    if body.code in RAISES:
        raise RAISES[body.code]
    # Whether FastAPI's per-request wrapping (request_response) ran: the shortcut goes around it; and whether
    # the app's middleware did: the lane goes around them.
    wrapped = "fastapi_inner_astack" in request.scope
    stacked = "starlette.exception_handlers" in request.scope
    headers = {"x-wrapped": str(wrapped).lower(), "x-stacked": str(stacked).lower()}
    return JSONResponse({"body": body.model_dump(), "tenant": caller_of(request).tenant}, headers=headers)


def make_app(route_class: type[fastapi.routing.APIRoute], shortcut: bool = False) -> FastAPI:
    app = FastAPI()
    errors.install(app)
    app.add_middleware(BodySizeLimit, max_body_size=LIMIT)
    app.add_middleware(ReplicaHeader)
    app.add_middleware(BrowserGuard, hosts=["localhost"])
    app.get("/echo")(other_method)
    router = APIRouter(dependencies=[Authorized], route_class=route_class)
    router.post("/echo")(echo)
    app.include_router(router)
    if shortcut:
        install_shortcuts(app, router)
    app.state.gateway = Holder(
        Tenants(None, TOKEN, 0, 0), PeerAuth(b"k" * 32, "replica-a"), Metrics(), Manager("replica-a")
    )
    return app


async def other_method(request: Request) -> Response:
    """``GET`` on the same path: not the shortcut's."""
    return JSONResponse({"method": request.method})


# The route alone, the route behind its shortcut and lane (as the service has it), and FastAPI's own.
LEAN, SHORT, STOCK = make_app(LeanRoute), make_app(LeanRoute, shortcut=True), make_app(fastapi.routing.APIRoute)
AUTH = {"authorization": f"token {TOKEN}"}
JSON = {"content-type": "application/json"}


async def _post(app: FastAPI, content: bytes | AsyncIterator[bytes], headers: dict[str, str]) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # a 500 is an answer to compare
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        return await client.post("/echo", content=content, headers=headers)


async def answers(content: bytes, headers: dict[str, str]) -> list[httpx.Response]:
    return [await _post(app, content, headers) for app in (LEAN, SHORT, STOCK)]


def same(*responses: httpx.Response) -> None:
    first, *others = responses
    for other in others:
        assert (first.status_code, first.content) == (other.status_code, other.content)
        for name in ("content-type", "www-authenticate", "retry-after", REPLICA_HEADER):
            assert first.headers.get(name) == other.headers.get(name)


CASES: list[tuple[bytes, dict[str, str]]] = [
    (b'{"code": "1+1"}', {**AUTH, **JSON}),
    (b'{"code": "1+1", "session": "s-1", "timeout": 2}', {**AUTH, "content-type": "Application/JSON; charset=utf-8"}),
    (b'{"code": "1+1"}', {**AUTH, "content-type": "application/vnd.api+json"}),
    (b'{"code": "1+1"}', {**AUTH, "content-type": "text/plain"}),
    (b'{"code": "1+1"}', AUTH),
    (b'{"code": "1+1"}', JSON),
    (b'{"code": "1+1"}', {"authorization": "token wrong", **JSON}),
    (b'{"code": "1+1"}', {"authorization": f"Basic {TOKEN}", **JSON}),
    (b"", {**AUTH, **JSON}),
    (b"{", {**AUTH, **JSON}),
    (b"{", JSON),
    (b"[]", {**AUTH, **JSON}),
    (b'{"code": 5}', {**AUTH, **JSON}),
    (b'{"code": "1", "extra": 1}', {**AUTH, **JSON}),
    (b'{"code": "1", "session": "no/such"}', {**AUTH, **JSON}),
    (b'{"code": "1", "timeout": 0}', {**AUTH, **JSON}),
    (b'{"code": "1", "timeout": NaN}', {**AUTH, **JSON}),
    (b'{"code": "1", "timeout": 1e999}', {**AUTH, **JSON}),
    (b'{"code": "1", "timeout": ' + b"9" * 400 + b"}", {**AUTH, **JSON}),
    (b'{"code": "\\ud800"}', {**AUTH, **JSON}),
    (b'\xef\xbb\xbf{"code": "1"}', {**AUTH, **JSON}),
    ('{"code": "1"}'.encode("utf-16"), {**AUTH, **JSON}),
    (b'{"code": "\xff"}', {**AUTH, **JSON}),
    (b'{"code": "' + b"#" * LIMIT + b'"}', {**AUTH, **JSON}),
    *((json.dumps({"code": code}).encode(), {**AUTH, **JSON}) for code in RAISES),
    (b'{"code": "1+1"}', {**AUTH, **JSON, "host": "rebound.example"}),
    (b'{"code": "1+1"}', {**AUTH, **JSON, "origin": "https://elsewhere.example"}),
    (b'{"code": "1+1"}', {**AUTH, **JSON, "origin": "http://localhost:8888"}),
]


@pytest.mark.parametrize(("content", "headers"), CASES)
async def test_each_request_gets_the_stock_answer(content: bytes, headers: dict[str, str]) -> None:
    same(*await answers(content, headers))


async def _chunks(size: int) -> AsyncIterator[bytes]:
    yield b'{"code": "'
    for _ in range(size // 1024):
        yield b"#" * 1024
    yield b'"}'


@pytest.mark.parametrize("size", [LIMIT // 2, LIMIT * 2])
async def test_a_chunked_body_over_the_limit_is_refused_alike(size: int) -> None:
    headers = {**AUTH, **JSON}
    replies = [await _post(app, _chunks(size), headers) for app in (LEAN, SHORT, STOCK)]
    same(*replies)
    assert replies[0].status_code == (413 if size > LIMIT else 200)
    if size <= LIMIT:  # no declared length to check against the limit: the middleware counts it
        assert replies[1].headers["x-stacked"] == "true"


async def test_errors_in_a_lane_are_answered_by_the_apps_handlers() -> None:
    for code, status in (("raise: not found", 404), ("raise: draining", 503), ("raise: http", 418),
                         ("raise: unexpected", 500)):  # fmt: skip
        short, stock = [
            await _post(app, json.dumps({"code": code}).encode(), {**AUTH, **JSON}) for app in (SHORT, STOCK)
        ]
        same(short, stock)
        assert short.status_code == status and set(short.json()) >= {"reason", "message"}


def test_a_lane_stands_aside_for_middleware_it_does_not_know() -> None:
    assert isinstance(SHORT.middleware_stack or SHORT.build_middleware_stack(), Lane)
    app = make_app(LeanRoute, shortcut=True)
    app.add_middleware(GZipMiddleware)  # any middleware the lane cannot tell the effects of
    assert not isinstance(app.build_middleware_stack(), Lane)


JSONISH = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "code": JSONISH,
        "session": st.sampled_from(["s", "a" * 200, "x y", None, 3]),
        "timeout": st.sampled_from([1, 0, -1, 0.5, "2", None, True]),
        "other": JSONISH,
    },
)


@settings(max_examples=150, deadline=None)
@given(body=FIELDS | JSONISH, raw=st.binary(max_size=30), use_raw=st.booleans())
def test_generated_bodies_get_the_stock_answer(body: Any, raw: bytes, use_raw: bool) -> None:
    content = raw if use_raw else json.dumps(body).encode()  # json: integers of any size too
    same(*asyncio.run(answers(content, {**AUTH, **JSON})))


@pytest.mark.parametrize("app", [LEAN, SHORT], ids=["route", "shortcut"])
async def test_only_the_plain_request_skips_fastapis_handler(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    solved: list[str] = []
    original = fastapi.routing.solve_dependencies

    async def counting(*args: Any, **kwargs: Any) -> Any:
        solved.append(kwargs["request"].url.path)
        return await original(*args, **kwargs)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", counting)
    plain = await _post(app, b'{"code": "x"}', {**AUTH, **JSON})
    assert plain.status_code == 200 and plain.json() == {
        "body": {"code": "x", "session": None, "timeout": None},
        "tenant": DEFAULT_TENANT,
    }
    assert solved == []
    assert plain.headers["x-wrapped"] == ("false" if app is SHORT else "true")
    assert plain.headers["x-stacked"] == ("false" if app is SHORT else "true")  # the lane: no middleware
    refused = await _post(app, b'{"code": "x"}', JSON)
    assert refused.status_code == 401 and solved == ["/echo"]

    async def anyone() -> Caller:
        return Caller()

    app.dependency_overrides[require_auth] = anyone  # overrides are FastAPI's to apply: its way
    try:
        assert (await _post(app, b'{"code": "x"}', JSON)).status_code == 200
    finally:
        app.dependency_overrides.clear()
    assert solved == ["/echo", "/echo"]


def test_the_execute_routes_are_lean() -> None:
    assert {r.path for r in execute.router.routes if isinstance(r, LeanRoute)} == {"/execute", "/execute/stream"}


async def test_a_shortcut_takes_only_its_own_method_and_path() -> None:
    transport = httpx.ASGITransport(app=SHORT)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        assert (await client.get("/echo", headers=AUTH)).json() == {"method": "GET"}
        assert (await client.post("/echo/", content=b'{"code": "x"}', headers={**AUTH, **JSON})).status_code in (
            307,
            404,
        )
        assert (await client.put("/echo", headers=AUTH)).status_code == 405
    assert not any(isinstance(r, Shortcut) for r in STOCK.router.routes)
    assert isinstance(SHORT.router.routes[0], Shortcut)


def test_a_lean_route_refuses_an_endpoint_it_cannot_call() -> None:
    async def other(payload: ExecuteRequest, request: Request, gw: GatewayDep) -> Response:
        return JSONResponse({})

    with pytest.raises(TypeError, match="takes"):
        LeanRoute("/x", other, methods=["POST"], dependencies=[Authorized])
    with pytest.raises(TypeError, match="require_auth"):
        LeanRoute("/x", echo, methods=["POST"])


@pytest.mark.parametrize(
    ("value", "plain"),
    [("application/json", True), ("Application/JSON ; charset=utf-8", True), ("application/json-seq", False),
     ("application/x+json", False), ("text/json", False), (None, False), ("", False)],
)  # fmt: skip
def test_is_json(value: str | None, plain: bool) -> None:
    assert is_json(value) is plain


def test_decode_leaves_what_it_cannot_read_to_fastapi() -> None:
    assert decode(ExecuteRequest, b'{"code": "a", "timeout": 2}') == ExecuteRequest(code="a", timeout=2.0)
    for bad in (b"", b"null", b'{"code": 1}', b'{"code": "a", "timeout": NaN}', b'\xef\xbb\xbf{"code": "a"}'):
        assert decode(ExecuteRequest, bad) is None
