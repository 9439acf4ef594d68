"""End to end on the local hub (`python -m hub.local`): real gateway, JupyterHub, configurable-http-proxy, and a
user server, all on 127.0.0.1.

A user logs in through the hub's login form (cookies, _xsrf), the server is spawned through the REST API,
then -- through the proxy, with the user's cookies as a browser would -- a kernel is created and a cell runs
over the user server's kernel WebSocket. The kernel must be the gateway's: its id is in the gateway's
/api/kernels and its process descends from the gateway's.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest
from websockets.asyncio.client import connect

from tests.jupyter_ws import run_cell
from tests.kernel_process import host_pid

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "demo-password-7"
ADMIN_TOKEN = "local-hub-admin-token-123"
GATEWAY_TOKEN = "local-hub-gateway-token-456"
USER = "alice"
STARTUP_TIMEOUT = 150.0  # includes `npm ci` of configurable-http-proxy on a fresh checkout

pytestmark = pytest.mark.timeout(240)


@dataclass
class LocalHub:
    proc: subprocess.Popen[str]
    log: list[str] = field(default_factory=list)
    url: str = ""
    gateway_url: str = ""

    def text(self) -> str:
        return "".join(self.log)

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"token {ADMIN_TOKEN}"}, timeout=30)


def _pump(hub: LocalHub) -> None:
    assert hub.proc.stdout is not None
    for line in hub.proc.stdout:
        hub.log.append(line)


def _wait_listening(hub: LocalHub, runtime: Path) -> None:
    """The addresses from the file the local hub writes (atomically) once the hub answers: not parsed out of a
    stream other processes may write to as well."""
    path = runtime / "listening.json"
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not path.exists():
        assert hub.proc.poll() is None, "local hub exited:\n" + hub.text()
        assert time.monotonic() < deadline, "local hub did not start:\n" + hub.text()
        time.sleep(0.2)
    listening = json.loads(path.read_text())
    hub.url, hub.gateway_url = listening["hub"], listening["gateway"]


def _stop(proc: subprocess.Popen[str]) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(60)
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHub]:
    runtime = tmp_path_factory.mktemp("local-hub")
    cmd = [sys.executable, "-m", "hub.local", "--port", "0", "--runtime-dir", str(runtime)]
    cmd += ["--password", PASSWORD]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "JPY_", "KERNEL_"))}
    # Tokens in the environment, as they should be (a command line is visible to every user of the machine).
    env.update(SKG_HUB_ADMIN_TOKEN=ADMIN_TOKEN, SKG_HUB_GATEWAY_TOKEN=GATEWAY_TOKEN, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    hub = LocalHub(proc)
    threading.Thread(target=_pump, args=(hub,), daemon=True).start()
    children: list[psutil.Process] = []
    try:
        _wait_listening(hub, runtime)
        assert hub.url.startswith("http://127.0.0.1:") and hub.gateway_url.startswith("http://127.0.0.1:")
        httpx.URL(hub.url)  # a whole URL
        yield hub
        children = psutil.Process(proc.pid).children(recursive=True)
    finally:
        rc = _stop(proc)
        out = ROOT / "test-output" / "test_local_hub"
        out.mkdir(parents=True, exist_ok=True)
        (out / "local-hub.log").write_text(hub.text())
        for log in (*runtime.glob("gateway.log"), *runtime.glob("jupyterhub.log")):
            (out / log.name).write_text(log.read_text(errors="replace"))
    # SIGTERM stops everything it started, cleanly.
    assert rc == 0, hub.text()[-3000:]
    assert not [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def _wait(what: str, check: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.25)
    raise TimeoutError(f"{what}: not within {timeout:g} s")


def _login(hub: LocalHub, password: str) -> httpx.Client:
    client = httpx.Client(base_url=hub.url, follow_redirects=True, timeout=30)
    page = client.get("/hub/login")
    assert page.status_code == 200, page.text
    match = re.search(r'name="_xsrf"\s+value="([^"]+)"', page.text)
    xsrf = match.group(1) if match else client.cookies.get("_xsrf")
    assert xsrf, "no _xsrf in the login form"
    client.post("/hub/login", data={"username": USER, "password": password, "_xsrf": xsrf})
    return client


def test_login_spawn_run_on_gateway_stop(hub: LocalHub) -> None:
    # The login form refuses a wrong password and accepts the demo one.
    bad = _login(hub, "wrong")
    assert bad.get("/hub/api/user").status_code == 403
    bad.close()
    browser = _login(hub, PASSWORD)
    me = browser.get("/hub/api/user")
    assert me.status_code == 200 and me.json()["name"] == USER, me.text

    # Spawn through the REST API (admin token), wait until the hub calls the server ready.
    with hub.admin() as admin:
        r = admin.post(f"/hub/api/users/{USER}/server")
        assert r.status_code in (201, 202), r.text

        def ready() -> bool:
            servers = admin.get(f"/hub/api/users/{USER}").json().get("servers", {})
            return bool(servers.get("", {}).get("ready"))

        _wait("user server ready", ready, 90)

    # As the browser: JupyterLab through the proxy (the OAuth dance with the hub happens in the redirects).
    lab = browser.get(f"/user/{USER}/lab")
    assert lab.status_code == 200, lab.text[-2000:]
    assert "JupyterLab" in lab.text
    base = f"/user/{USER}"
    xsrf = browser.cookies.get("_xsrf", path=f"{base}/") or browser.cookies.get("_xsrf")
    assert xsrf
    r = browser.post(f"{base}/api/kernels", json={"name": "python3"}, headers={"X-XSRFToken": xsrf})
    assert r.status_code == 201, r.text
    kid = r.json()["id"]

    cookie = "; ".join(f"{c.name}={c.value}" for c in browser.cookies.jar)
    ws_url = hub.url.replace("http://", "ws://") + f"{base}/api/kernels/{kid}/channels"

    async def cells() -> tuple[str, str]:
        async with connect(ws_url, additional_headers={"Cookie": cookie}, open_timeout=30) as ws:
            answer = await run_cell(ws, "6*7", timeout=60)
            assert answer.reply["content"]["status"] == "ok", answer.reply["content"]
            result = [m for m in answer.iopub if m["header"]["msg_type"] == "execute_result"]
            # The kernel's connection file names it on the host too (a sandboxed kernel has a pid namespace of
            # its own, so its pid says nothing outside).
            where = await run_cell(
                ws, "import os, sys\nprint(sys.argv[sys.argv.index('-f') + 1], os.environ.get('KERNEL_SKG_HUB'))"
            )
            return result[0]["content"]["data"]["text/plain"], where.stdout

    value, where = asyncio.run(cells())
    assert value == "42"

    # Executed by the gateway: the kernel is the gateway's, and its process is the gateway's descendant.
    with httpx.Client(base_url=hub.gateway_url, headers={"Authorization": f"token {GATEWAY_TOKEN}"}) as gw:
        assert kid in [k["id"] for k in gw.get("/api/kernels").json()]
    connection_file, marker = where.split()
    assert marker == "local"  # KERNEL_* from the user server reached the gateway's kernel
    gateway = next(
        p
        for p in psutil.Process(hub.proc.pid).children()
        if "kernel_gateway" in " ".join(p.cmdline())
    )  # fmt: skip
    # Exec'd or forked from the gateway's zygote (whose command line it keeps), the kernel is the process
    # serving that connection file's sockets.
    assert host_pid(connection_file) in {p.pid for p in gateway.children(recursive=True)}

    # Stop the server through the REST API; the hub reports it gone.
    with hub.admin() as admin:
        r = admin.delete(f"/hub/api/users/{USER}/server")
        assert r.status_code in (202, 204), r.text
        _wait("user server stopped", lambda: admin.get(f"/hub/api/users/{USER}").json().get("servers") == {}, 60)
    assert browser.get(f"/user/{USER}/api/status", follow_redirects=False).status_code != 200
    browser.close()
