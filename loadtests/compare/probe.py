"""The driver's own Jupyter client (httpx + websockets, no locust): cold and warm start probes, idle users."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import httpx
from websockets.asyncio.client import connect

from loadtests.users import cells
from loadtests.users.protocol import CellOutcome, decode, execute_request

TIMEOUT = 180.0


@dataclass(frozen=True)
class Api:
    """A Jupyter server API (a user's server, a hub user's server through the proxy, or the gateway)."""

    base: str
    token: str
    notebook: str = ""  # a notebook's path: its kernel comes from the sessions API, as JupyterLab gets it

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"} if self.token else {}

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base, headers=self.headers, timeout=TIMEOUT)


async def start_kernel(api: Api) -> str:
    async with api.client() as c:
        r = await c.post("/api/kernels", json={"name": "python3"})
        r.raise_for_status()
        return str(r.json()["id"])


async def open_notebook(api: Api) -> str:
    """JupyterLab opening ``api.notebook``: the session of that path (a new one, with a new kernel, if the
    server has none whose kernel still exists); returns its kernel id."""
    body = {"path": api.notebook, "name": api.notebook, "type": "notebook", "kernel": {"name": "python3"}}
    async with api.client() as c:
        r = await c.post("/api/sessions", json=body)
        r.raise_for_status()
        return str(r.json()["kernel"]["id"])


async def kernel_exists(api: Api, kernel_id: str) -> bool:
    async with api.client() as c:
        r = await c.get(f"/api/kernels/{kernel_id}")
        if r.status_code not in (200, 404):
            r.raise_for_status()
        return r.status_code == 200


async def run_cell(api: Api, kernel_id: str, code: str) -> CellOutcome:
    url = "ws" + api.base[len("http") :] + f"/api/kernels/{kernel_id}/channels"
    async with connect(url, additional_headers=api.headers, open_timeout=TIMEOUT, max_size=None) as ws:
        request = execute_request(code, session="skg-compare-probe")
        outcome = CellOutcome(request["header"]["msg_id"])
        await ws.send(json.dumps(request))
        async with asyncio.timeout(TIMEOUT):
            while not outcome.done:
                outcome.feed(decode(await ws.recv()))
    if outcome.status != "ok":
        raise RuntimeError(f"cell failed: {outcome.error}")
    return outcome


async def hold_state(api: Api, marker: str) -> str:
    """A user who starts a kernel (or opens a notebook), stores its marker and goes idle; returns the kernel id."""
    kernel_id = await (open_notebook(api) if api.notebook else start_kernel(api))
    await run_cell(api, kernel_id, cells.make_state_cell(marker))
    return kernel_id


@dataclass(frozen=True)
class Resume:
    seconds: float  # from the request to the first result
    state_back: bool
    kernel_id: str


async def resume(api: Api, kernel_id: str, marker: str) -> Resume:
    """A user back after idling: its kernel if it still exists, else a new one; then the state check. The
    clock runs from the first request, so it includes whatever had to start (server, replica, restore)."""
    began = time.perf_counter()
    if api.notebook:
        kernel_id = await open_notebook(api)
    elif not await kernel_exists(api, kernel_id):
        kernel_id = await start_kernel(api)
    outcome = await run_cell(api, kernel_id, cells.STATE_CHECK)
    return Resume(time.perf_counter() - began, cells.state_kept(outcome.stdout, marker), kernel_id)


async def warm_start(api: Api) -> float:
    """A new kernel on processes that are already up, to its first result (the study's warm start)."""
    began = time.perf_counter()
    kernel_id = await start_kernel(api)
    await run_cell(api, kernel_id, "1 + 1")
    seconds = time.perf_counter() - began
    async with api.client() as c:
        await c.delete(f"/api/kernels/{kernel_id}")
    return seconds
