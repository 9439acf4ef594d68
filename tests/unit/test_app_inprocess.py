"""Both faces in-process: the real app over httpx's ASGI transport (and Starlette's test client for the
WebSocket), with a real ipykernel behind it and the embedded store. No service process, no sockets of ours."""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from kernel_gateway.app import create_app
from kernel_gateway.settings import Settings
from notebook_state.types import REPLY_KEY


def settings(data_dir: Path) -> Settings:
    return Settings(data_dir=data_dir, pool_size=1, preload_modules=[], port=0, _env_file=None)  # type: ignore[call-arg]


@pytest.fixture(scope="module")
async def app(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[FastAPI]:
    application = create_app(settings(tmp_path_factory.mktemp("inproc")))
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    # A loopback host name: without a token the app refuses other hosts (DNS rebinding, kernel_gateway.browsers).
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost", timeout=60) as c:
        yield c


async def test_execute_keeps_state_and_answers_after_the_commit(client: httpx.AsyncClient) -> None:
    first = (await client.post("/execute", json={"code": "x = 6 * 7\nprint('hi')\nx"})).json()
    assert first["status"] == "ok", first
    assert first["checkpoint"]["status"] == "committed"
    assert first["outputs"] == [
        {"output_type": "stream", "name": "stdout", "text": "hi\n"},
        {"output_type": "execute_result", "execution_count": 1, "data": {"text/plain": "42"}, "metadata": {}},
    ]
    again = (await client.post("/execute", json={"session": first["session"], "code": "x + 1"})).json()
    assert again["outputs"][0]["data"]["text/plain"] == "43"
    view = (await client.get(f"/sessions/{first['session']}")).json()
    assert view["state"] == "active" and "x" in view["checkpoint"]["variables"]
    kernels = (await client.get("/api/kernels")).json()
    assert {"id": first["session"], "name": "python3"}.items() <= next(
        k for k in kernels if k["id"] == first["session"]
    ).items()
    assert (await client.delete(f"/sessions/{first['session']}")).status_code == 204
    assert (await client.get(f"/api/kernels/{first['session']}")).status_code == 404


async def test_stream_sends_session_outputs_then_reply(client: httpx.AsyncClient) -> None:
    body = (await client.post("/execute/stream", json={"code": "print(1)\nprint(2)"})).text
    events = [block.split("\n", 1) for block in body.strip().split("\n\n")]
    names = [e[0].removeprefix("event: ") for e in events]
    assert names[0] == "session" and names[-1] == "reply" and "output" in names
    reply = orjson.loads(events[-1][1].removeprefix("data: "))
    assert reply["status"] == "ok" and reply["outputs"][0]["text"] == "1\n2\n"


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/execute", {"code": 5}, 422),
        ("POST", "/execute", {"code": "1", "session": "no/such"}, 422),
        ("POST", "/execute", {"code": "1", "session": "never-created"}, 404),
        ("GET", "/sessions/never-created", None, 404),
        ("GET", "/api/kernels/*", None, 404),
        ("POST", "/api/kernels", {"name": "no-such-kernelspec"}, 404),
        ("POST", "/sessions", {"id": "bad id"}, 422),
    ],
)
async def test_bad_input_is_a_json_4xx_naming_the_problem(
    client: httpx.AsyncClient, method: str, path: str, body: Any, status: int
) -> None:
    response = await client.request(method, path, json=body)
    assert response.status_code == status
    error = response.json()
    assert set(error) >= {"reason", "message"} and error["message"]


@pytest.fixture(scope="module")
def sync_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    # Starlette's test client runs the app (and its lifespan) on its own loop: a separate app instance.
    with TestClient(create_app(settings(tmp_path_factory.mktemp("inproc-ws"))), base_url="http://localhost") as c:
        yield c


def test_kernel_websocket_runs_a_cell_and_the_reply_follows_its_outputs(sync_client: TestClient) -> None:
    kernel = sync_client.post("/api/kernels", json={}).json()
    with sync_client.websocket_connect(f"ws://localhost/api/kernels/{kernel['id']}/channels") as ws:
        header = {"msg_id": "m1", "msg_type": "execute_request", "session": "t", "username": "t", "version": "5.3"}
        content = {"code": "y = 5\nprint('ws')", "silent": False, "store_history": True, "user_expressions": {}}
        ws.send_text(orjson.dumps({"channel": "shell", "header": header, "parent_header": {}, "metadata": {},
                                   "content": content}).decode())  # fmt: skip
        seen: list[tuple[str, str]] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            msg = orjson.loads(ws.receive_text())
            if msg["parent_header"].get("msg_id") != "m1":
                continue
            seen.append((msg["channel"], msg["msg_type"]))
            if msg["msg_type"] == "execute_reply":
                assert msg["content"]["status"] == "ok"
                # The cell's checkpoint rode in this reply to the service, which took it out and committed it.
                assert REPLY_KEY not in msg["metadata"]
                break
        assert ("iopub", "stream") in seen
        assert seen.index(("iopub", "stream")) < seen.index(("shell", "execute_reply"))
    view = sync_client.get(f"/sessions/{kernel['id']}").json()
    assert "y" in view["checkpoint"]["variables"] and view["checkpoint"]["execution_count"] == 1, view
    assert sync_client.delete(f"/api/kernels/{kernel['id']}").status_code == 204


def test_the_app_closes_with_no_process_pipe_left_to_its_closed_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The replica's close stops its kernel zygote and waits for its pipes while its loop runs. Left to the garbage
    # collector, a subprocess transport closes them through a loop that is gone by then: an unraisable
    # RuntimeError, whose report under pytest re-entered an AST build (Python 3.11) and failed another test.
    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)

    async def serve_then_close() -> None:
        application = create_app(settings(tmp_path))
        async with application.router.lifespan_context(application):
            pool = application.state.gateway.manager.pool
            for _ in range(1200):  # until the warm kernel is up, so its zygote is too (bounded: 60 s)
                if pool.ready_count:
                    break
                await asyncio.sleep(0.05)
            assert pool.ready_count == 1

    asyncio.run(serve_then_close())
    gc.collect()
    assert unraisable == []
