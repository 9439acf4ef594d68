"""The Jupyter Kernel Gateway REST API and kernel WebSocket, spoken to directly."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets
from websockets.asyncio.client import connect

from tests.jupyter_ws import execute_request, message, recv_json, run_cell
from tests.service import Service


@pytest.fixture
def client(service: Service) -> Iterator[httpx.Client]:
    with service.client() as c:
        yield c


@pytest.fixture
def kernel_id(client: httpx.Client) -> Iterator[str]:
    kid: str = client.post("/api/kernels", json={"name": "python3"}).json()["id"]
    yield kid
    client.delete(f"/api/kernels/{kid}")


def ws_url(service: Service, kid: str) -> str:
    return f"{service.ws_url}/api/kernels/{kid}/channels"


def test_api_root_and_kernelspecs(client: httpx.Client) -> None:
    assert "version" in client.get("/api").json()
    specs = client.get("/api/kernelspecs").json()
    assert specs["default"] == "python3"
    python3 = specs["kernelspecs"]["python3"]
    assert python3["spec"]["language"] == "python"
    assert client.get("/api/kernelspecs/python3").json()["name"] == "python3"
    missing = client.get("/api/kernelspecs/cobol")
    assert missing.status_code == 404
    assert "cobol" in missing.json()["message"]
    logo = python3["resources"].get("logo-64x64")
    assert logo == "/kernelspecs/python3/logo-64x64.png"
    r = client.get(logo)
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    assert client.get("/kernelspecs/python3/kernel.json").status_code == 404
    assert client.get("/kernelspecs/python3/..%2F..%2Fetc%2Fpasswd").status_code == 404


def test_kernel_lifecycle(client: httpx.Client) -> None:
    r = client.post("/api/kernels", json={"name": "python3", "env": {"KERNEL_USERNAME": "ada"}})
    assert r.status_code == 201
    model = r.json()
    kid = model["id"]
    assert r.headers["location"] == f"/api/kernels/{kid}"
    assert set(model) == {"id", "name", "last_activity", "execution_state", "connections"}
    assert kid in [k["id"] for k in client.get("/api/kernels").json()]
    assert client.get(f"/api/kernels/{kid}").json()["name"] == "python3"
    assert client.post(f"/api/kernels/{kid}/interrupt").status_code == 204
    restarted = client.post(f"/api/kernels/{kid}/restart")
    assert restarted.status_code == 200
    assert restarted.json()["id"] == kid
    assert client.delete(f"/api/kernels/{kid}").status_code == 204
    assert client.get(f"/api/kernels/{kid}").status_code == 404
    for path in (f"/api/kernels/{kid}/interrupt", f"/api/kernels/{kid}/restart"):
        assert client.post(path).status_code == 404
    assert client.delete(f"/api/kernels/{kid}").status_code == 404


def test_create_kernel_without_body_and_bad_bodies(client: httpx.Client) -> None:
    r = client.post("/api/kernels")
    assert r.status_code == 201
    client.delete(f"/api/kernels/{r.json()['id']}")
    assert client.post("/api/kernels", json={"name": "nope"}).status_code == 404
    bad = client.post("/api/kernels", content="{", headers={"content-type": "application/json"})
    assert bad.status_code == 422
    assert client.post("/api/kernels", json={"env": {"KERNEL_X": 1}}).status_code == 422


def test_kernel_env_only_passes_kernel_variables(client: httpx.Client) -> None:
    env = {"KERNEL_USERNAME": "ada", "PATH_HIJACK": "x", "SKG_TOKEN": "stolen"}
    kid = client.post("/api/kernels", json={"env": env}).json()["id"]
    code = "import os\n[os.environ.get(k) for k in ('KERNEL_USERNAME', 'PATH_HIJACK', 'SKG_TOKEN')]"
    out = client.post("/execute", json={"code": code, "session": kid}).json()
    assert out["outputs"][0]["data"]["text/plain"] == "['ada', None, None]"
    client.delete(f"/api/kernels/{kid}")


def test_kernel_working_dir_is_honoured_where_it_exists(client: httpx.Client, tmp_path: Path) -> None:
    # A directory the sandboxed kernel can see (this checkout, read-only), and one that exists nowhere.
    here = Path(__file__).resolve().parent
    for workdir, expected in ((here, str(here)), (tmp_path / "missing", None)):
        kid = client.post("/api/kernels", json={"env": {"KERNEL_WORKING_DIR": str(workdir)}}).json()["id"]
        out = client.post("/execute", json={"code": "import os\nos.getcwd()", "session": kid}).json()
        cwd = out["outputs"][0]["data"]["text/plain"].strip("'")
        if expected is None:
            assert cwd != str(workdir)
        else:
            assert cwd == expected
        client.delete(f"/api/kernels/{kid}")


def test_kernel_process_holds_no_service_secrets(client: httpx.Client) -> None:
    code = "import os\nsorted(k for k in os.environ if k.startswith('SKG_') or 'TOKEN' in k or 'REDIS' in k)"
    out = client.post("/execute", json={"code": code}).json()
    assert out["outputs"][0]["data"]["text/plain"] == "[]"


async def test_websocket_json_protocol(service: Service, kernel_id: str) -> None:
    async with connect(ws_url(service, kernel_id), additional_headers=service.headers) as ws:
        assert ws.subprotocol is None
        first = await run_cell(ws, "a = 40")
        assert first.reply["content"]["status"] == "ok"
        second = await run_cell(ws, "print('out'); a + 2")
        assert second.stdout == "out\n"
        assert second.of_type("execute_result")[0]["content"]["data"]["text/plain"] == "42"
        assert second.reply["content"]["execution_count"] == first.reply["content"]["execution_count"] + 1
        assert second.reply["msg_type"] == "execute_reply"
        assert second.reply["header"]["msg_type"] == "execute_reply"
        err = await run_cell(ws, "undefined_name")
        assert err.reply["content"]["status"] == "error"
        assert err.of_type("error")[0]["content"]["ename"] == "NameError"


async def test_websocket_stdin_input(service: Service, kernel_id: str) -> None:
    async with connect(ws_url(service, kernel_id), additional_headers=service.headers) as ws:
        result = await run_cell(ws, "name = input('who? ')\nprint('hi', name)", stdin_answer="grace")
        assert result.stdin[0]["content"]["prompt"] == "who? "
        assert result.stdout == "hi grace\n"


async def test_websocket_v1_binary_protocol(service: Service, kernel_id: str) -> None:
    from jupyter_server.services.kernels.connection.base import (
        deserialize_msg_from_ws_v1,
        serialize_msg_to_ws_v1,
    )

    url = ws_url(service, kernel_id)
    async with connect(url, additional_headers=service.headers, subprotocols=["v1.kernel.websocket.jupyter.org"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "v1.kernel.websocket.jupyter.org"
        request = execute_request("import base64\nb = b'\\x00\\x01'\n6 * 7")
        parts = [json.dumps(request[k]).encode() for k in ("header", "parent_header", "metadata", "content")]
        await ws.send(serialize_msg_to_ws_v1(parts, "shell"))
        seen: dict[str, dict[str, object]] = {}
        for _ in range(20):
            frame = await asyncio.wait_for(ws.recv(), 30)
            assert isinstance(frame, bytes)
            channel, parts = deserialize_msg_from_ws_v1(frame)
            header, parent, _, content = (json.loads(p) for p in parts[:4])
            msg = {"channel": channel, "header": header, "content": content}
            if parent.get("msg_id") != request["header"]["msg_id"]:
                continue
            seen[msg["header"]["msg_type"]] = msg
            if "execute_reply" in seen and "execute_result" in seen:
                break
        assert seen["execute_reply"]["channel"] == "shell"
        result = seen["execute_result"]
        assert result["channel"] == "iopub"
        assert result["content"]["data"]["text/plain"] == "42"  # type: ignore[index]


async def test_two_connections_each_get_their_replies(service: Service, kernel_id: str) -> None:
    url = ws_url(service, kernel_id)
    async with (
        connect(url, additional_headers=service.headers) as one,
        connect(url, additional_headers=service.headers) as two,
    ):
        r1, r2 = await asyncio.gather(run_cell(one, "'from one'"), run_cell(two, "'from two'"))
        assert r1.of_type("execute_result")[0]["content"]["data"]["text/plain"] == "'from one'"
        assert r2.of_type("execute_result")[0]["content"]["data"]["text/plain"] == "'from two'"
        # Each connection sees only its own shell replies, but both see all iopub traffic.
        request = execute_request("'only one'")
        await one.send(json.dumps(request))
        got_iopub_on_two = False
        for _ in range(20):
            msg = await recv_json(two, 30)
            assert msg["channel"] != "shell" or msg["parent_header"]["msg_id"] != request["header"]["msg_id"]
            ours = msg["parent_header"].get("msg_id") == request["header"]["msg_id"]
            if ours and msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                got_iopub_on_two = True
                break
        assert got_iopub_on_two
    assert httpx.get(f"{service.url}/api/kernels/{kernel_id}", headers=service.headers).json()["connections"] == 0


async def test_websocket_survives_restart(service: Service, kernel_id: str) -> None:
    async with connect(ws_url(service, kernel_id), additional_headers=service.headers) as ws:
        await run_cell(ws, "before = 1")
        async with httpx.AsyncClient(base_url=service.url, headers=service.headers) as c:
            assert (await c.post(f"/api/kernels/{kernel_id}/restart")).status_code == 200
        states = []
        for _ in range(10):
            msg = await recv_json(ws, 10)
            if msg["msg_type"] == "status":
                states.append(msg["content"]["execution_state"])
                if msg["content"]["execution_state"] == "idle":
                    break
        assert "restarting" not in states  # a requested restart is not a crash (JupyterLab would say "died")
        assert states[-2:] == ["starting", "idle"]
        after = await run_cell(ws, "'before' in globals()")
        assert after.of_type("execute_result")[0]["content"]["data"]["text/plain"] == "False"
        assert after.reply["content"]["execution_count"] == 1


async def test_interrupt_over_rest_stops_a_websocket_cell(service: Service, kernel_id: str) -> None:
    async with connect(ws_url(service, kernel_id), additional_headers=service.headers) as ws:
        running = asyncio.Event()
        code = "import time\nprint('running', flush=True)\ntime.sleep(120)"
        task = asyncio.create_task(run_cell(ws, code, timeout=110, started=running))
        await asyncio.wait_for(running.wait(), 60)
        async with httpx.AsyncClient(base_url=service.url, headers=service.headers) as c:
            assert (await c.post(f"/api/kernels/{kernel_id}/interrupt")).status_code == 204
        result = await asyncio.wait_for(task, 100)
        assert result.reply["content"]["status"] == "error"
        assert result.reply["content"]["ename"] == "KeyboardInterrupt"


async def test_malformed_messages_are_dropped_not_fatal(service: Service, kernel_id: str) -> None:
    async with connect(ws_url(service, kernel_id), additional_headers=service.headers) as ws:
        await ws.send("not json")
        await ws.send(json.dumps({"channel": "iopub", "header": {"msg_id": "x", "msg_type": "status"}}))
        await ws.send(json.dumps({"channel": "shell", "header": {}}))
        await ws.send(struct.pack("!I", 99))
        result = await run_cell(ws, "'still here'")
        assert result.of_type("execute_result")[0]["content"]["data"]["text/plain"] == "'still here'"


async def test_kernel_info_request(service: Service, kernel_id: str) -> None:
    async with connect(ws_url(service, kernel_id), additional_headers=service.headers) as ws:
        request = message("kernel_info_request", {})
        await ws.send(json.dumps(request))
        for _ in range(10):
            msg = await recv_json(ws)
            if msg["msg_type"] == "kernel_info_reply":
                assert msg["parent_header"]["msg_id"] == request["header"]["msg_id"]
                assert msg["content"]["language_info"]["name"] == "python"
                break
        else:
            pytest.fail("no kernel_info_reply")


async def test_websocket_to_unknown_kernel_is_refused(service: Service) -> None:
    with pytest.raises(websockets.InvalidStatus) as info:
        async with connect(ws_url(service, "missing"), additional_headers=service.headers):
            pass
    assert info.value.response.status_code == 404
