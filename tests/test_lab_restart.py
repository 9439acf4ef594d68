"""A Jupyter server pointed at the gateway is stopped (Knative scaling it to zero, a hub culling it) and started
again: the notebook's kernel, and its variables, are still there.

jupyter_server itself deletes every gateway kernel when it stops and forgets sessions kept in memory;
skg_jupyter's managers leave the kernels on the gateway and adopt them again, and the session database lives
where the user's files do.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

import skg_jupyter
from tests.jupyter_app import JupyterServer, start_jupyter, stop_group
from tests.jupyter_ws import run_cell
from tests.service import Service

ROOT = Path(__file__).resolve().parent.parent


def start(tmp: Path, service: Service, db: Path, *extra: str) -> JupyterServer:
    assert service.token
    return start_jupyter(
        tmp,
        gateway_url=service.url,
        gateway_token=service.token,
        token="lab-restart-token",
        args=[*skg_jupyter.SERVER_OPTIONS, f"--SessionManager.database_filepath={db}", *extra],
        env={"PYTHONPATH": str(ROOT)},
        log_name=f"jupyter-{len(list(tmp.glob('jupyter-*.log')))}.log",
    )


async def run_through(server: JupyterServer, kernel_id: str, code: str) -> str:
    url = f"{server.ws_url}/api/kernels/{kernel_id}/channels?session_id=lab-restart"
    async with connect(url, additional_headers=server.headers) as ws:
        result = await run_cell(ws, code, timeout=120)
    assert result.reply["content"]["status"] == "ok", result.reply["content"]
    text: str = result.of_type("execute_result")[0]["content"]["data"]["text/plain"]
    return text


async def test_notebook_kernel_and_variables_survive_a_server_restart(service: Service, tmp_path: Path) -> None:
    db = tmp_path / "home" / "skg-sessions.db"
    db.parent.mkdir(parents=True)
    first = await asyncio.to_thread(start, tmp_path, service, db)
    try:
        async with first.client() as c:
            body = {"path": "analysis.ipynb", "type": "notebook", "name": "", "kernel": {"name": "python3"}}
            created = (await c.post("/api/sessions", json=body)).json()
        kernel_id = created["kernel"]["id"]
        assert await run_through(first, kernel_id, "x = 41\nx") == "41"
    finally:
        # SIGTERM, as Knative and JupyterHub stop a server.
        await asyncio.to_thread(stop_group, first.proc)
    assert "Left 1 kernel(s) on the gateway" in first.log()
    kept = httpx.get(f"{service.url}/api/kernels/{kernel_id}", headers=service.headers, timeout=30)
    assert kept.status_code == 200, "the stopped server deleted the notebook's kernel on the gateway"

    second = await asyncio.to_thread(start, tmp_path, service, db)
    try:
        async with second.client() as c:
            sessions = (await c.get("/api/sessions")).json()
        mine = [s for s in sessions if s["path"] == "analysis.ipynb"]
        assert [s["kernel"]["id"] for s in mine] == [kernel_id]
        assert await run_through(second, kernel_id, "x + 1") == "42"
    finally:
        await asyncio.to_thread(stop_group, second.proc)
        httpx.delete(f"{service.url}/api/kernels/{kernel_id}", headers=service.headers, timeout=30)


@pytest.mark.parametrize("opt_out", ["--CachingGatewayMappingKernelManager.shutdown_kernels_on_exit=True"])
async def test_opting_out_deletes_kernels_on_exit_as_jupyter_server_does(
    service: Service, tmp_path: Path, opt_out: str
) -> None:
    server = await asyncio.to_thread(start, tmp_path, service, tmp_path / "sessions.db", opt_out)
    try:
        async with server.client() as c:
            kernel_id = (await c.post("/api/kernels", json={"name": "python3"})).json()["id"]
    finally:
        await asyncio.to_thread(stop_group, server.proc)
    gone = httpx.get(f"{service.url}/api/kernels/{kernel_id}", headers=service.headers, timeout=30)
    assert gone.status_code == 404
