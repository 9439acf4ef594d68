"""A kernel WebSocket cut mid-cell (as Knative's queue-proxy cuts them) loses no output: the reconnect, here or
through another replica, gets what the kernel said meanwhile, in order, and the reply it was owed."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.jupyter_ws import Msg, execute_request, recv_json
from tests.redis_server import RedisServer, redis_server
from tests.service import Service
from tests.test_replicas import replicas

CELL = "import time\nprint('first', flush=True)\ntime.sleep(1)\nprint('second', flush=True)\n'done'"


@pytest.fixture
def redis_srv(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path / "redis") as srv:
        yield srv


def ws_url(via: Service, kernel_id: str, client_session: str) -> str:
    return f"{via.ws_url}/api/kernels/{kernel_id}/channels?session_id={client_session}"


async def until_first_output(ws: ClientConnection, msg_id: str) -> None:
    for _ in range(1000):
        msg = await recv_json(ws, 60)
        if msg["parent_header"].get("msg_id") == msg_id and msg["header"]["msg_type"] == "stream":
            assert msg["content"]["text"] == "first\n"
            return
    raise AssertionError("the cell never printed")


def wait_detached_and_idle(owner: Service, kernel_id: str) -> None:
    """The cell ran to its end with no frontend attached: everything after 'first' was said meanwhile."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        model = httpx.get(f"{owner.url}/api/kernels/{kernel_id}", headers=owner.headers, timeout=10).json()
        if model["connections"] == 0 and model["execution_state"] == "idle":
            return
        time.sleep(0.1)
    raise AssertionError("the kernel never went idle with no WebSocket attached")


async def collect_cell(ws: ClientConnection, msg_id: str) -> list[Msg]:
    """Messages of the cell ``msg_id`` until its reply and its idle have both arrived."""
    seen: list[Msg] = []
    replied = idle = False
    for _ in range(1000):
        if replied and idle:
            return seen
        msg = await recv_json(ws, 60)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        seen.append(msg)
        replied = replied or msg["header"]["msg_type"] == "execute_reply"
        idle = idle or (msg["header"]["msg_type"] == "status" and msg["content"]["execution_state"] == "idle")
    raise AssertionError("the cell's reply never came")


async def cut_mid_cell_and_resume(owner: Service, via: Service, kernel_id: str) -> list[Msg]:
    client_session = uuid.uuid4().hex
    request = execute_request(CELL)
    msg_id = request["header"]["msg_id"]
    ws = await connect(ws_url(via, kernel_id, client_session), additional_headers=via.headers)
    await ws.send(json.dumps(request))
    await until_first_output(ws, msg_id)
    # Cut: the TCP connection drops with no close frame, as a proxy's timeout would drop it.
    ws.transport.abort()
    await asyncio.to_thread(wait_detached_and_idle, owner, kernel_id)
    async with connect(ws_url(via, kernel_id, client_session), additional_headers=via.headers) as again:
        return await collect_cell(again, msg_id)


def summary(messages: list[Msg]) -> list[Any]:
    out: list[Any] = []
    for m in messages:
        kind = m["header"]["msg_type"]
        if kind == "stream":
            out.append(("stream", m["content"]["text"]))
        elif kind == "execute_result":
            out.append(("result", m["content"]["data"]["text/plain"]))
        elif kind == "execute_reply":
            out.append(("reply", m["content"]["status"]))
    return out


async def test_cut_socket_resumes_on_the_owner_with_no_lost_output(tmp_path: Path, redis_srv: RedisServer) -> None:
    with replicas(tmp_path, redis_srv, 2) as (a, b):
        kernel_id = httpx.post(f"{a.url}/api/kernels", headers=a.headers, json={}, timeout=60).json()["id"]
        resumed = await cut_mid_cell_and_resume(a, a, kernel_id)
        assert summary(resumed) == [("stream", "second\n"), ("result", "'done'"), ("reply", "ok")]

        # Through another replica (relayed to the owner), the same: the owner kept the output under the key.
        resumed = await cut_mid_cell_and_resume(a, b, kernel_id)
        assert summary(resumed) == [("stream", "second\n"), ("result", "'done'"), ("reply", "ok")]


async def test_another_client_session_does_not_get_someone_elses_backlog(
    tmp_path: Path, redis_srv: RedisServer
) -> None:
    with replicas(tmp_path, redis_srv, 1) as (a,):
        kernel_id = httpx.post(f"{a.url}/api/kernels", headers=a.headers, json={}, timeout=60).json()["id"]
        request = execute_request(CELL)
        ws = await connect(ws_url(a, kernel_id, "first-tab"), additional_headers=a.headers)
        await ws.send(json.dumps(request))
        await until_first_output(ws, request["header"]["msg_id"])
        ws.transport.abort()
        await asyncio.to_thread(wait_detached_and_idle, a, kernel_id)
        async with connect(ws_url(a, kernel_id, "second-tab"), additional_headers=a.headers) as other:
            probe = execute_request("'probe'")
            await other.send(json.dumps(probe))
            seen = await collect_cell(other, probe["header"]["msg_id"])
            assert summary(seen) == [("result", "'probe'"), ("reply", "ok")]
