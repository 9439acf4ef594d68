"""A real Jupyter server process (jupyter_server or jupyterlab) pointed at a gateway, for end-to-end tests.

Each one gets its own config, data, runtime and root dirs, so neither the developer's Jupyter settings nor
stray KERNEL_*/JUPYTER_* variables can leak in; its log is kept in a file for whoever reads a failure.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.redis_server import free_port

STARTUP_TIMEOUT = 60.0


@dataclass
class JupyterServer:
    proc: subprocess.Popen[bytes]
    url: str
    token: str
    log_path: Path

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[len("http") :]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=60.0)


def start_jupyter(
    tmp: Path,
    *,
    gateway_url: str,
    gateway_token: str,
    token: str,
    module: str = "jupyter_server",
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    log_name: str = "jupyter-server.log",
    startup_timeout: float = STARTUP_TIMEOUT,
) -> JupyterServer:
    """Start ``python -m <module>`` on a free loopback port with ``--gateway-url``; return once it answers."""
    root = tmp / "notebooks"
    for sub in ("config", "data", "runtime", "notebooks"):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc_env = {
        k: v
        for k, v in os.environ.items()
        # Keep the user's Jupyter settings and any stray gateway/kernel settings out of this server.
        if not k.startswith(("JUPYTER_", "KERNEL_", "JUPYTERLAB_")) and k != "JPY_SESSION_NAME"
    }
    proc_env.update(
        JUPYTER_CONFIG_DIR=str(tmp / "config"),
        JUPYTER_DATA_DIR=str(tmp / "data"),
        JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
        JUPYTER_PLATFORM_DIRS="1",
        PYTHONUNBUFFERED="1",
        **(env or {}),
    )
    cmd = [
        sys.executable,
        "-m",
        module,
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        "--ServerApp.open_browser=False",
        "--ServerApp.allow_root=True",
        "--ServerApp.terminals_enabled=False",
        "--ServerApp.log_level=DEBUG",
        f"--ServerApp.root_dir={root}",
        f"--gateway-url={gateway_url}",
        f"--GatewayClient.auth_token={gateway_token}",
        "--GatewayClient.connect_timeout=10",
        *args,
    ]
    log_path = tmp / log_name
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            cmd, stdout=log_file, stderr=subprocess.STDOUT, env=proc_env, cwd=root, start_new_session=True
        )
    server = JupyterServer(proc, f"http://127.0.0.1:{port}", token, log_path)
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{module} exited with {proc.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.url}/api/status", headers=server.headers, timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    stop_group(proc)
    raise TimeoutError(f"{module} not up in {startup_timeout} s:\n{server.log()}")


def stop_group(proc: subprocess.Popen[bytes] | subprocess.Popen[str], timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL; then kill the process group it leads, so nothing it spawned outlives the test."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
