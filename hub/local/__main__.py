"""``python -m hub.local``: a Serverless Kernel Gateway + JupyterHub (+ configurable-http-proxy) on 127.0.0.1.

Starts the gateway (unless --gateway-url names one), then JupyterHub with hub/local/jupyterhub_config.py;
once the hub answers, writes its address to ``<runtime-dir>/listening.json`` (``{"hub": url, "gateway": url}``,
replaced atomically, so a script never reads half of it) and prints ``SKG_HUB_LISTENING <url>``; stops
everything on Ctrl-C or SIGTERM (or when either process dies). The gateway's and JupyterHub's own logs go to
``gateway.log`` and ``jupyterhub.log`` in the runtime dir, so this process's output is its own lines only. Log
in with any user name and the --password.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import suppress
from pathlib import Path
from types import FrameType

import httpx

HERE = Path(__file__).resolve().parent
CHP = HERE / "node_modules" / ".bin" / "configurable-http-proxy"
STARTUP_TIMEOUT = 90.0
STOP_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def ensure_chp() -> Path:
    """configurable-http-proxy from hub/local/node_modules, installed there (npm ci) on first use."""
    if not CHP.exists():
        npm = shutil.which("npm")
        if npm is None:
            raise SystemExit("configurable-http-proxy is not installed and npm is not on PATH (Node.js 20+ needed)")
        print(f"installing configurable-http-proxy into {HERE / 'node_modules'}", file=sys.stderr, flush=True)
        cmd = [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"]
        subprocess.run(cmd, cwd=HERE, check=True, timeout=300)
    return CHP


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m hub.local", description=__doc__)
    p.add_argument("--port", type=int, default=8000, help="public port of the hub (0: a free one)")
    p.add_argument("--password", default=os.environ.get("SKG_HUB_PASSWORD", "skg-demo"), help="DummyAuthenticator")
    p.add_argument("--gateway-url", default="", help="use this gateway instead of starting one")
    p.add_argument("--gateway-token", default=os.environ.get("SKG_HUB_GATEWAY_TOKEN", ""), help="its token")
    p.add_argument("--admin-token", default=os.environ.get("SKG_HUB_ADMIN_TOKEN", ""), help="admin API token")
    p.add_argument("--runtime-dir", type=Path, default=HERE / ".run", help="database, cookie secret, logs, homes")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def _pump(proc: subprocess.Popen[str], log: Path, found: threading.Event, box: list[str]) -> None:
    assert proc.stdout is not None
    with log.open("a") as out:
        for line in proc.stdout:
            out.write(line)
            out.flush()
            if line.startswith("SKG_LISTENING ") and not found.is_set():
                box.append(line.split()[1])
                found.set()
    found.set()


def start_gateway(runtime: Path, token: str) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "kernel_gateway", "--host", "127.0.0.1", "--port", "0"]
    cmd += ["--data-dir", str(runtime / "skg"), "--pool-size", "1"]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # The token travels in the environment, not on the command line where `ps` shows it.
        env={**os.environ, "PYTHONUNBUFFERED": "1", "SKG_TOKEN": token},
        start_new_session=True,
    )
    found, box = threading.Event(), list[str]()
    log = runtime / "gateway.log"
    threading.Thread(target=_pump, args=(proc, log, found, box), daemon=True).start()
    if not found.wait(STARTUP_TIMEOUT) or not box:
        stop(proc)
        raise SystemExit(f"the gateway did not start; see {log}")
    url = box[0]
    wait_http(f"{url}/readyz", proc, "gateway")
    return proc, url


def wait_http(url: str, proc: subprocess.Popen[str], what: str, timeout: float = STARTUP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        with suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise SystemExit(f"{what} did not answer {url} within {timeout:g} s")


def write_listening(runtime: Path, hub_url: str, gateway_url: str) -> Path:
    """The addresses, in a file replaced atomically: readers see all of it or none of it."""
    path = runtime / "listening.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"hub": hub_url, "gateway": gateway_url}))
    tmp.replace(path)
    return path


def descendants(pid: int) -> list[int]:
    try:
        import psutil  # type: ignore[import-untyped]
    except ImportError:
        return []
    with suppress(psutil.Error):
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    return []


def stop(proc: subprocess.Popen[str], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, then SIGKILL; then kill what it left behind (its process group and its children's, e.g. the user
    servers and the proxy JupyterHub starts in sessions of their own)."""
    left = descendants(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    for pid in [proc.pid, *left]:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        with suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runtime: Path = args.runtime_dir.resolve()
    (runtime / "home").mkdir(parents=True, exist_ok=True)
    runtime.chmod(0o700)
    chp = ensure_chp()
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    procs: list[subprocess.Popen[str]] = []
    (runtime / "listening.json").unlink(missing_ok=True)  # a previous run's
    try:
        gateway_url, gateway_token = args.gateway_url, args.gateway_token
        if not gateway_url:
            gateway_token = gateway_token or secrets.token_urlsafe(24)
            gateway, gateway_url = start_gateway(runtime, gateway_token)
            procs.append(gateway)
            print(f"SKG_GATEWAY {gateway_url} (log: {runtime / 'gateway.log'})", flush=True)
        port = args.port or free_port()
        env = {
            **os.environ,
            "SKG_HUB_RUNTIME_DIR": str(runtime),
            "SKG_HUB_GATEWAY_URL": gateway_url,
            "SKG_HUB_GATEWAY_TOKEN": gateway_token,
            "SKG_HUB_PASSWORD": args.password,
            "SKG_HUB_ADMIN_TOKEN": args.admin_token,
            "SKG_HUB_PORT": str(port),
            "SKG_HUB_HUB_PORT": str(free_port()),
            "SKG_HUB_PROXY_API_PORT": str(free_port()),
            "SKG_HUB_CHP": str(chp),
            "SKG_HUB_LOG_LEVEL": args.log_level,
        }
        cmd = [sys.executable, "-m", "jupyterhub", "-f", str(HERE / "jupyterhub_config.py")]
        with (runtime / "jupyterhub.log").open("ab") as hub_log:
            hub = subprocess.Popen(
                cmd, env=env, cwd=runtime, start_new_session=True, text=True, stdout=hub_log, stderr=subprocess.STDOUT
            )
        procs.append(hub)
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/hub/api", hub, "jupyterhub")
        listening = write_listening(runtime, url, gateway_url)
        sys.stdout.write(f"SKG_HUB_LISTENING {url}\n")  # one write: the line cannot be split
        sys.stdout.flush()
        print(f"log in at {url}/hub/login with any user name and the password given (--password); addresses in "
              f"{listening}, JupyterHub's log in {runtime / 'jupyterhub.log'}", flush=True)  # fmt: skip
        while not stopping.is_set():
            if any(p.poll() is not None for p in procs):
                print("a process exited; stopping", file=sys.stderr, flush=True)
                return 1
            stopping.wait(0.5)
        return 0
    finally:
        for proc in reversed(procs):  # the hub (which stops the user servers and the proxy), then the gateway
            stop(proc)


if __name__ == "__main__":
    raise SystemExit(main())
