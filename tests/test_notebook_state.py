"""Session state through the service: the embedded store across restarts, eviction, forced checkpoints,
tampered checkpoints, and the WebSocket face's cell ordering and restore notice."""

from __future__ import annotations

import ast
import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.jupyter_ws import execute_request, recv_json, run_cell
from tests.kernel_process import CONNECTION_FILE, host_pid
from tests.redis_server import redis_server
from tests.service import Service, running_service, start_service
from tests.test_replicas import SIGNING_KEY, TOKEN, run, value


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


def test_embedded_store_survives_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = start_service(tmp_path, ["--pool-size", "1", "--data-dir", str(data)])
    try:
        sid = run(first, "import collections\nd = collections.Counter('hello')\nn = 5")["session"]
        run(first, "n += 1", sid)
    finally:
        assert first.stop(signal.SIGTERM) == 0
    with running_service(tmp_path, ["--pool-size", "1", "--data-dir", str(data)]) as second:
        assert sid in [s["id"] for s in httpx.get(f"{second.url}/sessions").json()]
        reply = run(second, "(n, d['l'])", sid)
        assert value(reply) == "(6, 2)"
        assert reply["restored"]["execution_count"] == 2
        assert reply["execution_count"] == 3


def test_idle_session_is_evicted_and_restored_on_next_use(tmp_path: Path) -> None:
    args = ["--pool-size", "1", "--evict-idle-after", "1.5"]
    with running_service(tmp_path, args) as service, service.client() as c:
        reply = run(service, f"kernel_file = {CONNECTION_FILE}\nkernel_file")
        sid, kernel_file = reply["session"], value(reply)
        pid = host_pid(ast.literal_eval(kernel_file))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and c.get(f"/sessions/{sid}").json()["state"] != "stored":
            time.sleep(0.3)
        info = c.get(f"/sessions/{sid}").json()
        assert info["state"] == "stored"
        assert info["owner"] is None
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(pid)  # the kernel's memory is freed
        again = run(service, "kernel_file", sid)
        assert value(again) == kernel_file  # the variable came back from the store
        assert again["restored"] is not None
        assert "kernel_file" in again["restored"]["restored"]
        metrics = c.get("/metrics").text
        assert "skg_restores_total 1.0" in metrics
        assert 'skg_checkpoints_total{status="committed"}' in metrics
        assert "skg_restore_seconds_count 1.0" in metrics


def test_forced_checkpoint_and_session_details(tmp_path: Path) -> None:
    with running_service(tmp_path, ["--pool-size", "1"]) as service, service.client() as c:
        sid = run(service, "big = list(range(10000))\nsmall = 1")["session"]
        forced = c.post(f"/sessions/{sid}/checkpoint")
        assert forced.status_code == 200
        assert forced.json()["status"] == "committed"
        assert forced.json()["written_bytes"] == 0  # nothing changed since the cell's own checkpoint
        info = c.get(f"/sessions/{sid}").json()
        assert info["checkpoint"]["bytes"] > 10000
        assert {"big", "small"} <= set(info["checkpoint"]["variables"])
        assert info["checkpoint"]["age_seconds"] >= 0
        assert info["checkpoint"]["status"] == "committed"
        assert info["owner"]["url"] == service.url
        assert c.post("/sessions/missing/checkpoint").status_code == 404


def _redis_service(tmp_path: Path, url: str, name: str) -> Service:
    env = {"SKG_REDIS_URL": url, "SKG_SIGNING_KEY": SIGNING_KEY}
    return start_service(tmp_path / name, ["--pool-size", "1"], token=TOKEN, env=env)


def test_tampered_checkpoints_are_refused(tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis") as srv:
        a = _redis_service(tmp_path, srv.url, "a")
        b = _redis_service(tmp_path, srv.url, "b")
        try:
            sid = run(a, "good = 'kept'\nbad = [1, 2, 3]")["session"]
            other = run(a, "fine = 1")["session"]
            a.proc.kill()
            a.proc.wait(10)
            client = srv.client()
            # A blob altered in Redis: that variable group is refused, the rest restores.
            blob_keys = [k for k in client.keys(f"skg:{{{sid}}}:blob:*")]
            tampered = None
            for key in blob_keys:
                chunks = client.lrange(key, 0, -1)
                if b"bad" in b"".join(chunks):
                    client.lset(key, 0, chunks[0][:-1] + bytes([chunks[0][-1] ^ 1]))
                    tampered = key
            assert tampered is not None
            reply = run(b, "good", sid)
            assert value(reply) == "'kept'"
            assert "signature verification" in reply["restored"]["lost"]["bad"]
            # A manifest altered in Redis: the whole checkpoint is refused with a clear error.
            manifest_key = f"skg:{{{other}}}:manifest"
            data = client.hget(manifest_key, "data")
            assert data is not None
            client.hset(manifest_key, "data", data.replace(b'"fine"', b'"evil"'))
            refused = httpx.post(f"{b.url}/execute", json={"code": "1", "session": other}, headers=b.headers)
            assert refused.status_code == 409
            assert "failed signature verification" in refused.json()["message"]
        finally:
            for svc in (a, b):
                svc.stop(signal.SIGKILL)


def test_kernel_never_sees_redis_credentials_or_signing_key(tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis") as srv:
        svc = _redis_service(tmp_path, srv.url.replace("redis://", "redis://:@"), "s")
        try:
            code = (
                "import os\n"
                f"[k for k, v in os.environ.items() if {SIGNING_KEY!r} in v or 'redis://' in v or k.startswith('SKG')]"
            )
            assert value(run(svc, code)) == "[]"
        finally:
            svc.stop()


async def test_websocket_cells_run_one_at_a_time_and_abort_after_an_error(service: Service) -> None:
    kid = httpx.post(f"{service.url}/api/kernels", headers=service.headers).json()["id"]
    async with connect(f"{service.ws_url}/api/kernels/{kid}/channels", additional_headers=service.headers) as ws:
        requests = [execute_request(code) for code in ("a = 1", "1/0", "b = 2")]
        for request in requests:
            await ws.send(json.dumps(request))
        replies: dict[str, dict[str, Any]] = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while len(replies) < 3 and loop.time() < deadline:
            msg = await recv_json(ws, 30)
            if msg["channel"] == "shell":
                replies[msg["parent_header"]["msg_id"]] = msg
        statuses = [replies[r["header"]["msg_id"]]["content"]["status"] for r in requests]
        assert statuses == ["ok", "error", "aborted"]
        check = await run_cell(ws, "('a' in globals(), 'b' in globals())")
        assert check.of_type("execute_result")[0]["content"]["data"]["text/plain"] == "(True, False)"
    httpx.delete(f"{service.url}/api/kernels/{kid}", headers=service.headers)


async def test_websocket_is_told_of_a_restore(tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis") as srv:
        a = _redis_service(tmp_path, srv.url, "a")
        b = _redis_service(tmp_path, srv.url, "b")
        try:
            sid = run(a, "x = 10")["session"]
            run(a, "x += 1", sid)
            a.proc.kill()
            a.proc.wait(10)
            url = f"{b.ws_url}/api/kernels/{sid}/channels"
            async with connect(url, additional_headers=b.headers) as ws:
                first = await recv_json(ws, 30)
                assert first["msg_type"] == "status"
                assert first["content"]["restored"]["execution_count"] == 2
                result = await run_cell(ws, "x")
                assert result.of_type("execute_result")[0]["content"]["data"]["text/plain"] == "11"
                assert result.reply["content"]["execution_count"] == 3
        finally:
            for svc in (a, b):
                svc.stop(signal.SIGKILL)


@pytest.mark.parametrize("code", ["import os\nos._exit(1)"])
def test_dead_kernel_comes_back_with_the_last_committed_state(tmp_path: Path, code: str) -> None:
    with running_service(tmp_path, ["--pool-size", "1"]) as service:
        sid = run(service, "survivor = 'here'")["session"]
        died = httpx.post(f"{service.url}/execute", json={"code": code, "session": sid}, timeout=60).json()
        assert died["error"]["ename"] == "KernelDied"
        after = run(service, "survivor", sid)
        assert value(after) == "'here'"
        assert after["restored"] is not None
        assert any("restored" in n for n in after["notices"])
