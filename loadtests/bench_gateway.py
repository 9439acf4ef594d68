"""The gateway benchmark: what the service adds to a kernel round trip, and how it compares with
jupyter-kernel-gateway 3.0 on the same machine.

One run starts everything it measures, on 127.0.0.1 only, and stops all of it again (also on error):

(a) raw jupyter_client round trip of ``1+1`` (AsyncKernelManager + AsyncKernelClient, no HTTP), over IPC (the
    service's transport) and TCP (jupyter_client's default);
(b) ``POST /execute`` of ``1+1`` on a warm session over one keep-alive httpx connection;
(c) the same over the Jupyter WebSocket (one JSON ``execute_request``; done when both its ``execute_reply`` and
    its iopub ``status: idle`` have arrived);
(d) ``POST /execute`` without a session: a new session on a warm pool kernel, to its first result;
(e) executes per second with 1, 2, 4 and 8 concurrent sessions over the Jupyter WebSocket, on this service and
    on jupyter-kernel-gateway 3.0 (installed into its own venv, never into the project's), plus this service's
    REST throughput;
(f) RSS of the service process, and of its process tree (kernels included), with 0 and with 8 idle sessions.

It prints one JSON document on stdout (progress goes to stderr) and writes it to
``loadtests/results/bench_gateway.json``. Run as ``python -m loadtests.bench_gateway`` or ``skg-bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import psutil
from jupyter_client.manager import AsyncKernelManager
from websockets.asyncio.client import ClientConnection, connect

from loadtests.common import (
    HOST,
    BenchError,
    ManagedProcess,
    cpu_model,
    free_port,
    git_commit,
    log,
    package_version,
    percentile,
    sigterm_as_exit,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_OUTPUT = HERE / "results" / "bench_gateway.json"
DEFAULT_JKG_VENV = HERE / ".venv-jkg"
JKG_REQUIREMENT = "jupyter-kernel-gateway==3.0.*"
CODE = "1+1"
LEVELS = (1, 2, 4, 8)

STARTUP_TIMEOUT = 120.0  # a service to listen and fill its pool
REQUEST_TIMEOUT = 30.0  # one execute, any face
POOL_REFILL_TIMEOUT = 120.0
PIP_TIMEOUT = 900.0
MAX_REQUESTS_PER_LOOP = 1_000_000  # a throughput loop's hard count bound, beside its time bound
THROUGHPUT_GRACE = 60.0  # beyond --duration, before a throughput level is abandoned

TARGETS = {
    "rest_p50_overhead_ms": 1.5,
    "ws_p50_overhead_ms": 1.0,
    "new_session_p50_ms": 50.0,
    "throughput_8_sessions_vs_jkg": 1.5,
}

Json = dict[str, Any]
T = TypeVar("T")


def progress(message: str) -> None:
    log("bench", message)


# -- statistics --------------------------------------------------------------------------------------------


def latency_stats(seconds: Sequence[float]) -> Json:
    """Milliseconds: count, mean, min, p50, p90, p99, max."""
    ms = sorted(s * 1000.0 for s in seconds)
    if not ms:
        return {"n": 0}
    return {
        "n": len(ms),
        "mean": round(sum(ms) / len(ms), 3),
        "min": round(ms[0], 3),
        "p50": round(percentile(ms, 0.50), 3),
        "p90": round(percentile(ms, 0.90), 3),
        "p99": round(percentile(ms, 0.99), 3),
        "max": round(ms[-1], 3),
    }


# -- processes ---------------------------------------------------------------------------------------------


def wait_http_ok(proc: ManagedProcess, url: str, headers: dict[str, str], timeout: float) -> httpx.Response:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        proc.check_alive()
        try:
            response = httpx.get(url, headers=headers, timeout=5.0)
            if response.status_code == 200:
                return response
            last = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.1)
    raise BenchError(f"{proc.name}: {url} not OK within {timeout:g} s ({last}):\n{proc.tail()}")


def process_memory(pid: int) -> Json:
    """RSS of the process alone and of its whole tree (kernels included), in MiB; PSS of the tree too,
    since RSS counts shared pages once per process."""
    mib = 1024.0 * 1024.0
    root = psutil.Process(pid)
    own = root.memory_info().rss
    children = root.children(recursive=True)
    tree_rss = own
    tree_pss = 0
    pss_ok = True
    for proc in [root, *children]:
        try:
            if proc is not root:
                tree_rss += proc.memory_info().rss
            tree_pss += getattr(proc.memory_full_info(), "pss", 0)
        except psutil.NoSuchProcess:
            continue
        except psutil.AccessDenied:
            pss_ok = False
    return {
        "process_rss_mib": round(own / mib, 1),
        "tree_rss_mib": round(tree_rss / mib, 1),
        "tree_pss_mib": round(tree_pss / mib, 1) if pss_ok else None,
        "child_processes": len(children),
    }


CpuSampler = Callable[[], tuple[float | None, float]]
"""CPU seconds so far of a server process (None: no server) and of its kernels."""


def pids_cpu_seconds(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User + system CPU seconds of a process alone, and of its (live) children together."""
    root = psutil.Process(pid)
    times = root.cpu_times()
    own = times.user + times.system
    children = 0.0
    for proc in root.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            children += times.user + times.system
    return own, children


# -- the services ------------------------------------------------------------------------------------------


@dataclass
class Target:
    """A running gateway, as the benchmark reaches it."""

    name: str
    process: ManagedProcess
    url: str
    token: str

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[len("http") :]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=REQUEST_TIMEOUT)


def start_ours(data_dir: Path, pool_size: int, token: str, checkpoint: bool = True) -> Target:
    data_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "kernel_gateway",
        "--port",
        "0",
        "--host",
        HOST,
        "--data-dir",
        str(data_dir),
        "--token",
        token,
        "--pool-size",
        str(pool_size),
        "--shutdown-grace",
        "5",
        *([] if checkpoint else ["--no-checkpoint"]),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = ManagedProcess.start("serverless-kernel-gateway", cmd, env, data_dir)
    if not proc.listening.wait(STARTUP_TIMEOUT) or proc.url is None:
        proc.stop()
        raise BenchError(f"our service did not start:\n{proc.tail()}")
    return Target("serverless-kernel-gateway", proc, proc.url, token)


def jkg_env(venv: Path, home: Path | None = None) -> dict[str, str]:
    """An environment in which nothing of this project is importable: no PYTHONPATH, no project venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and not p.startswith(str(REPO))]
    env["PATH"] = os.pathsep.join([str(venv / "bin"), *path])
    env["VIRTUAL_ENV"] = str(venv)
    env["PYTHONUNBUFFERED"] = "1"
    if home is not None:
        env["JUPYTER_RUNTIME_DIR"] = str(home / "runtime")
        env["JUPYTER_DATA_DIR"] = str(home / "data")
        env["JUPYTER_CONFIG_DIR"] = str(home / "config")
    return env


_JKG_PROBE = """
import importlib.metadata as m, json, sys, kernel_gateway
names = ("jupyter-kernel-gateway", "jupyter_server", "jupyter_client", "ipykernel", "tornado", "pyzmq")
versions = {}
for name in names:
    try:
        versions[name] = m.version(name)
    except m.PackageNotFoundError:
        versions[name] = None
print(json.dumps({"python": sys.version.split()[0], "module": kernel_gateway.__file__, "versions": versions}))
"""


def probe_jkg_venv(venv: Path, cwd: Path) -> Json | None:
    python = venv / "bin" / "python"
    if not python.exists():
        return None
    done = subprocess.run(
        [str(python), "-c", _JKG_PROBE],
        env=jkg_env(venv),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        return None
    info: Json = json.loads(done.stdout)
    return info


def ensure_jkg_venv(venv: Path, cwd: Path) -> Json:
    """jupyter-kernel-gateway 3.0 in its own venv (its module is also called ``kernel_gateway``)."""
    info = probe_jkg_venv(venv, cwd)
    if info is not None and str(info["versions"].get("jupyter-kernel-gateway") or "").startswith("3.0."):
        progress(f"jupyter-kernel-gateway {info['versions']['jupyter-kernel-gateway']} found in {venv}")
    else:
        progress(f"creating {venv} with {JKG_REQUIREMENT} (one-off; pip output follows on stderr)")
        env = jkg_env(venv)
        if not (venv / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], env=env, cwd=cwd, check=True, timeout=300)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
        # The same ipykernel as ours, so that the kernels themselves are not what differs.
        ours = metadata.version("ipykernel")
        done = subprocess.run(
            [*pip, JKG_REQUIREMENT, f"ipykernel=={ours}"],
            env=env,
            cwd=cwd,
            stdout=sys.stderr,
            stderr=sys.stderr,
            timeout=PIP_TIMEOUT,
            check=False,
        )
        if done.returncode != 0:
            progress(f"ipykernel=={ours} did not install beside it; trying any ipykernel")
            subprocess.run(
                [*pip, JKG_REQUIREMENT, "ipykernel"],
                env=env,
                cwd=cwd,
                stdout=sys.stderr,
                stderr=sys.stderr,
                timeout=PIP_TIMEOUT,
                check=True,
            )
        info = probe_jkg_venv(venv, cwd)
        if info is None:
            raise BenchError(f"{venv} has no working jupyter-kernel-gateway after pip install")
    module = Path(info["module"]).resolve()
    if module.is_relative_to(REPO.resolve()) and not module.is_relative_to(venv.resolve()):
        raise BenchError(f"jupyter-kernel-gateway would import this project's kernel_gateway ({module})")
    return info


def start_jkg(venv: Path, home: Path, token: str) -> Target:
    port = free_port()
    cmd = [
        str(venv / "bin" / "jupyter"),
        "kernelgateway",
        f"--KernelGatewayApp.ip={HOST}",
        f"--KernelGatewayApp.port={port}",
        "--KernelGatewayApp.port_retries=0",
        "--JupyterWebsocketPersonality.list_kernels=True",
    ]
    env = jkg_env(venv, home)
    env["KG_AUTH_TOKEN"] = token
    proc = ManagedProcess.start("jupyter-kernel-gateway", cmd, env, cwd=home)
    target = Target("jupyter-kernel-gateway", proc, f"http://{HOST}:{port}", token)
    try:
        wait_http_ok(proc, target.url + "/api/kernelspecs", target.headers, STARTUP_TIMEOUT)
    except BaseException:
        proc.stop()
        raise
    return target


def wait_pool_full(target: Target, client: httpx.Client, timeout: float = POOL_REFILL_TIMEOUT) -> Json:
    deadline = time.monotonic() + timeout
    body: Json = {}
    while time.monotonic() < deadline:
        target.process.check_alive()
        with contextlib.suppress(httpx.HTTPError):
            body = client.get("/readyz").json()
            if body.get("pool_ready", 0) >= body.get("pool_size", 0) and not body.get("draining"):
                return body
        time.sleep(0.05)
    raise BenchError(f"the warm pool did not refill within {timeout:g} s (last /readyz: {body})")


def create_kernel(client: httpx.Client) -> str:
    response = client.post("/api/kernels", json={"name": "python3"}, timeout=STARTUP_TIMEOUT)
    if response.status_code != 201:
        raise BenchError(f"POST /api/kernels: HTTP {response.status_code}: {response.text[:500]}")
    kernel_id: str = response.json()["id"]
    return kernel_id


def create_session(client: httpx.Client) -> str:
    response = client.post("/sessions", timeout=STARTUP_TIMEOUT)
    if response.status_code != 201:
        raise BenchError(f"POST /sessions: HTTP {response.status_code}: {response.text[:500]}")
    session_id: str = response.json()["id"]
    return session_id


def kernelspec_argv(client: httpx.Client) -> list[str] | None:
    with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
        argv: list[str] = client.get("/api/kernelspecs/python3").json()["spec"]["argv"]
        return argv
    return None


# -- an event loop beside the main thread ------------------------------------------------------------------


class LoopThread:
    """An asyncio loop in a thread of its own, so that the asynchronous clients (jupyter_client, websockets)
    stay open between measurement blocks while the synchronous REST client runs in the main thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bench-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if not self.thread.is_alive():
            self.loop.close()


async def timed_block(request: Callable[[], Awaitable[float]], n: int) -> list[float]:
    return [await request() for _ in range(n)]


# -- (a) raw jupyter_client --------------------------------------------------------------------------------


class RawKernel:
    """A kernel of this machine's python3 kernelspec, reached by jupyter_client alone: no HTTP in between."""

    def __init__(self, transport: str, workdir: Path) -> None:
        stem = workdir / f"raw-{transport}-{uuid.uuid4().hex[:8]}"
        self.transport = transport
        self.stopped = False
        if transport == "ipc":
            self.km = AsyncKernelManager(
                kernel_name="python3", transport="ipc", ip=str(stem), connection_file=f"{stem}.json"
            )
        else:
            self.km = AsyncKernelManager(kernel_name="python3", ip=HOST, connection_file=f"{stem}.json")
        self.kc: Any = None

    async def start(self) -> None:
        await asyncio.wait_for(self.km.start_kernel(), STARTUP_TIMEOUT)
        self.kc = self.km.client()
        self.kc.start_channels(hb=False)
        await self.kc.wait_for_ready(timeout=STARTUP_TIMEOUT)

    async def execute(self) -> float:
        """Send ``1+1``; done when its execute_reply and its iopub ``status: idle`` have both arrived."""
        kc = self.kc
        started = time.perf_counter()
        msg_id = kc.execute(CODE, store_history=True, allow_stdin=False)
        while True:
            reply = await kc.get_shell_msg(timeout=REQUEST_TIMEOUT)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        while True:
            msg = await kc.get_iopub_msg(timeout=REQUEST_TIMEOUT)
            if (
                msg["parent_header"].get("msg_id") == msg_id
                and msg["msg_type"] == "status"
                and msg["content"].get("execution_state") == "idle"
            ):
                break
        elapsed = time.perf_counter() - started
        if reply["content"].get("status") != "ok":
            raise BenchError(f"raw execute failed: {reply['content']}")
        return elapsed

    @property
    def pid(self) -> int | None:
        process = getattr(self.km.provisioner, "process", None)
        pid: int | None = getattr(process, "pid", None)
        return pid

    async def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        if self.kc is not None:
            self.kc.stop_channels()
        with contextlib.suppress(Exception):
            await self.km.shutdown_kernel(now=True)  # also removes the connection file and IPC sockets


# -- (b) REST ----------------------------------------------------------------------------------------------


def rest_execute(client: httpx.Client, session: str | None) -> tuple[float, Json]:
    body: Json = {"code": CODE} if session is None else {"code": CODE, "session": session}
    started = time.perf_counter()
    response = client.post("/execute", json=body)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise BenchError(f"POST /execute: HTTP {response.status_code}: {response.text[:500]}")
    result: Json = response.json()
    if result.get("status") != "ok":
        raise BenchError(f"POST /execute: {result}")
    return elapsed, result


def check_two(result: Json) -> None:
    outputs = result.get("outputs") or []
    texts = [o.get("data", {}).get("text/plain") for o in outputs if isinstance(o, dict)]
    if "2" not in texts:
        raise BenchError(f"1+1 did not give 2: {result}")


def healthz(client: httpx.Client) -> float:
    """GET /healthz: what HTTP and the client cost with no kernel involved."""
    started = time.perf_counter()
    response = client.get("/healthz")
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise BenchError(f"GET /healthz: HTTP {response.status_code}")
    return elapsed


# -- (c) WebSocket -----------------------------------------------------------------------------------------


def execute_frame(msg_id: str, client_session: str) -> str:
    return orjson.dumps(
        {
            "header": {
                "msg_id": msg_id,
                "msg_type": "execute_request",
                "session": client_session,
                "username": "bench",
                "date": dt.datetime.now(dt.UTC).isoformat(),
                "version": "5.3",
            },
            "parent_header": {},
            "metadata": {},
            "content": {
                "code": CODE,
                "silent": False,
                "store_history": True,
                "user_expressions": {},
                "allow_stdin": False,
                "stop_on_error": True,
            },
            "buffers": [],
            "channel": "shell",
        }
    ).decode()


class Channels:
    """One Jupyter kernel WebSocket (JSON text frames, no compression) of one client session."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.client_session = uuid.uuid4().hex

    @classmethod
    async def open(cls, target: Target, kernel_id: str) -> Channels:
        ws = await connect(
            f"{target.ws_url}/api/kernels/{kernel_id}/channels",
            additional_headers=target.headers,
            compression=None,
            max_size=None,
            ping_interval=None,
            open_timeout=REQUEST_TIMEOUT,
            close_timeout=5,
        )
        return cls(ws)

    async def execute(self) -> float:
        """One execute_request; done when its execute_reply and its iopub ``status: idle`` have both arrived."""
        msg_id = uuid.uuid4().hex
        frame = execute_frame(msg_id, self.client_session)
        started = time.perf_counter()
        await self.ws.send(frame)
        replied = idle = False
        status = None
        async with asyncio.timeout(REQUEST_TIMEOUT):
            while not (replied and idle):
                raw = await self.ws.recv()
                if isinstance(raw, bytes):
                    continue  # a binary frame carries buffers: never one of ours for 1+1
                msg = orjson.loads(raw)
                if (msg.get("parent_header") or {}).get("msg_id") != msg_id:
                    continue
                channel = msg.get("channel")
                msg_type = msg.get("msg_type") or msg.get("header", {}).get("msg_type")
                if channel == "shell" and msg_type == "execute_reply":
                    replied = True
                    status = msg.get("content", {}).get("status")
                elif channel == "iopub" and msg_type == "status" and msg["content"].get("execution_state") == "idle":
                    idle = True
        elapsed = time.perf_counter() - started
        if status != "ok":
            raise BenchError(f"WebSocket execute failed: {status}")
        return elapsed

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()


async def open_all(target: Target, kernel_ids: Sequence[str]) -> list[Channels]:
    channels = [await Channels.open(target, kid) for kid in kernel_ids]
    for ch in channels:
        await timed_block(ch.execute, 5)
    return channels


async def close_all(channels: Sequence[Channels]) -> None:
    await asyncio.gather(*(ch.close() for ch in channels))


# -- (e) throughput ----------------------------------------------------------------------------------------


async def run_loops(loops: Sequence[Callable[[], Awaitable[float]]], duration: float, cpu: CpuSampler) -> Json:
    """Each request function in a loop of its own for ``duration`` seconds: executes per second overall."""
    counts = [0] * len(loops)
    latencies: list[float] = []
    deadline = 0.0

    async def loop(i: int, request: Callable[[], Awaitable[float]]) -> None:
        while counts[i] < MAX_REQUESTS_PER_LOOP and time.perf_counter() < deadline:
            latencies.append(await request())
            counts[i] += 1

    own_before, kids_before = cpu()
    client_cpu_before = time.process_time()
    started = time.perf_counter()
    deadline = started + duration
    async with asyncio.timeout(duration + THROUGHPUT_GRACE):
        await asyncio.gather(*(loop(i, request) for i, request in enumerate(loops)))
    elapsed = time.perf_counter() - started
    own_after, kids_after = cpu()
    client_cpu = time.process_time() - client_cpu_before
    server_cpu = None if own_after is None or own_before is None else own_after - own_before
    kernels_cpu = kids_after - kids_before
    total = sum(counts)

    def per_execute(seconds: float | None) -> float | None:
        return round(1000.0 * seconds / total, 3) if total and seconds is not None else None

    def percent(seconds: float | None) -> float | None:
        return None if seconds is None else round(100.0 * seconds / elapsed, 1)

    return {
        "sessions": len(loops),
        "executes": total,
        "seconds": round(elapsed, 3),
        "executes_per_second": round(total / elapsed, 1),
        "per_session": counts,
        "slowest_over_fastest_session": round(min(counts) / max(counts), 2) if max(counts) else None,
        "latency_ms": latency_stats(latencies),
        # CPU over the window (100 = one core): the server process, its kernels, and this client process.
        "server_tree_cpu_percent": percent((server_cpu or 0.0) + kernels_cpu),
        "server_process_cpu_percent": percent(server_cpu),
        "server_process_cpu_ms_per_execute": per_execute(server_cpu),
        "kernels_cpu_ms_per_execute": per_execute(kernels_cpu),
        "client_cpu_percent": percent(client_cpu),
    }


class RestLoops:
    """An async keep-alive httpx client for REST throughput (the latency measure uses a synchronous one)."""

    def __init__(self, target: Target, sessions: int) -> None:
        limits = httpx.Limits(max_connections=sessions + 4, max_keepalive_connections=sessions + 4)
        self.client = httpx.AsyncClient(
            base_url=target.url, headers=target.headers, timeout=REQUEST_TIMEOUT, limits=limits
        )

    async def execute(self, session: str) -> float:
        started = time.perf_counter()
        response = await self.client.post("/execute", json={"code": CODE, "session": session})
        elapsed = time.perf_counter() - started
        if response.status_code != 200 or response.json().get("status") != "ok":
            raise BenchError(f"POST /execute: HTTP {response.status_code}: {response.text[:500]}")
        return elapsed

    async def warm(self, session_ids: Sequence[str]) -> None:
        for _ in range(3):
            await asyncio.gather(*(self.execute(s) for s in session_ids))

    def loops(self, session_ids: Sequence[str]) -> list[Callable[[], Awaitable[float]]]:
        return [functools.partial(self.execute, s) for s in session_ids]

    async def close(self) -> None:
        await self.client.aclose()


# -- the run -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    runs: int
    warmup: int
    rounds: int
    duration: float
    new_session_samples: int
    pool_size: int
    skip_jkg: bool
    quick: bool
    jkg_venv: Path
    output: Path
    checkpoint: bool = True


def parse_args(argv: Sequence[str]) -> Config:
    parser = argparse.ArgumentParser(
        prog="skg-bench",
        description="Benchmark the gateway against raw jupyter_client and jupyter-kernel-gateway 3.0 "
        "(loopback only). Prints one JSON document on stdout; progress goes to stderr.",
    )
    parser.add_argument("--runs", type=int, default=None, help="round trips per latency measure (default 500)")
    parser.add_argument("--warmup", type=int, default=None, help="round trips before measuring (default 50)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=10,
        help="latency measures alternate in this many blocks, so that load from elsewhere hits them alike (10)",
    )
    parser.add_argument("--duration", type=float, default=None, help="seconds per throughput level (default 5)")
    parser.add_argument(
        "--new-session-samples", type=int, default=None, help="new-session samples, pool refilled between (20)"
    )
    parser.add_argument("--pool-size", type=int, default=2, help="warm pool of the service under test (2)")
    parser.add_argument("--skip-jkg", action="store_true", help="skip the jupyter-kernel-gateway comparison")
    parser.add_argument(
        "--no-checkpoint",
        action="store_true",
        help="run our service without per-cell checkpoints (the gateway alone; bench_state measures checkpoints)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 50 runs, 1 s per level, 5 samples")
    parser.add_argument(
        "--jkg-venv", type=Path, default=DEFAULT_JKG_VENV, help=f"venv for jupyter-kernel-gateway ({DEFAULT_JKG_VENV})"
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"JSON result file ({DEFAULT_OUTPUT})")
    args = parser.parse_args(list(argv))
    quick: bool = args.quick
    config = Config(
        runs=args.runs if args.runs is not None else (50 if quick else 500),
        warmup=args.warmup if args.warmup is not None else (10 if quick else 50),
        rounds=args.rounds,
        duration=args.duration if args.duration is not None else (1.0 if quick else 5.0),
        new_session_samples=args.new_session_samples if args.new_session_samples is not None else (5 if quick else 20),
        pool_size=args.pool_size,
        skip_jkg=args.skip_jkg,
        quick=quick,
        jkg_venv=args.jkg_venv.resolve(),
        output=args.output,
        checkpoint=not args.no_checkpoint,
    )
    if not 1 <= config.runs <= 100_000 or not 0 <= config.warmup <= 10_000:
        parser.error("--runs must be in [1, 100000], --warmup in [0, 10000]")
    if not 1 <= config.rounds <= config.runs:
        parser.error("--rounds must be in [1, --runs]")
    if not 1 <= config.new_session_samples <= 1000:
        parser.error("--new-session-samples must be in [1, 1000]")
    if not 0 < config.duration <= 600:
        parser.error("--duration must be in (0, 600]")
    if not 1 <= config.pool_size <= 16:
        parser.error("--pool-size must be in [1, 16]")
    return config


def environment() -> Json:
    version = package_version
    commit = git_commit(REPO)
    return {
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "serverless_kernel_gateway": version("serverless-kernel-gateway"),
        "git_commit": commit,
        "jupyter_client": version("jupyter_client"),
        "ipykernel": version("ipykernel"),
        "pyzmq": version("pyzmq"),
        "uvicorn": version("uvicorn"),
        "httpx": version("httpx"),
        "websockets": version("websockets"),
        "jupyter_kernel_gateway": None,  # filled in from its own venv
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def p50_minus(measured: Json, baseline: Json) -> float | None:
    if "p50" not in measured or "p50" not in baseline:
        return None
    return round(float(measured["p50"]) - float(baseline["p50"]), 3)


def targets(result: Json) -> Json:
    latency = result["latency_ms"]
    raw = latency["raw_jupyter_client_ipc"]
    rest = p50_minus(latency["rest_execute"], raw)
    ws = p50_minus(latency["websocket_execute"], raw)
    new_session = result["new_session_ms"].get("p50")
    ours = result["throughput"]["ours_websocket"].get("8", {}).get("executes_per_second")
    jkg = (result["throughput"].get("jkg_websocket") or {}).get("8", {}).get("executes_per_second")
    ratio = round(ours / jkg, 2) if ours and jkg else None

    def check(value: float | None, limit: float, at_most: bool = True) -> Json:
        passed = None if value is None else (value <= limit if at_most else value >= limit)
        return {"measured": value, "limit": ("<= " if at_most else ">= ") + f"{limit:g}", "pass": passed}

    checks = {
        "rest_p50_minus_raw_p50_ms": check(rest, TARGETS["rest_p50_overhead_ms"]),
        "ws_p50_minus_raw_p50_ms": check(ws, TARGETS["ws_p50_overhead_ms"]),
        "new_session_first_result_p50_ms": check(new_session, TARGETS["new_session_p50_ms"]),
        "ws_throughput_8_sessions_ours_over_jkg": check(ratio, TARGETS["throughput_8_sessions_vs_jkg"], at_most=False),
    }
    verdicts = [c["pass"] for c in checks.values()]
    return {
        **checks,
        "raw_baseline": "raw_jupyter_client_ipc: the transport the service itself uses to reach its kernels",
        "all_pass": None if None in verdicts else all(verdicts),
    }


class Bench:
    """One run: owns every process, client and connection it opens, and closes them all in ``close``."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.token = secrets.token_hex(16)
        self.workdir = Path(tempfile.mkdtemp(prefix="skg-bench-"))
        self.stack = contextlib.ExitStack()
        self.loop = LoopThread()
        self.stack.callback(shutil.rmtree, self.workdir, ignore_errors=True)
        self.stack.callback(self.loop.close)
        self.result: Json = {
            "benchmark": "bench_gateway",
            "environment": environment(),
            "config": {
                "code": CODE,
                "runs": config.runs,
                "warmup": config.warmup,
                "latency_rounds": config.rounds,
                "throughput_seconds_per_level": config.duration,
                "concurrency_levels": list(LEVELS),
                "new_session_samples": config.new_session_samples,
                "pool_size": config.pool_size,
                "quick": config.quick,
                "skip_jkg": config.skip_jkg,
                "client": "this one Python process: jupyter_client, a synchronous keep-alive httpx.Client (REST "
                "latency), httpx.AsyncClient (REST throughput), websockets without compression (JSON text frames)",
            },
            "services": {},
            "latency_ms": {},
            "new_session_ms": {},
            "raw_first_execute_on_fresh_kernel_ms": {},
            "throughput": {},
            "memory": {},
        }

    def close(self) -> None:
        self.stack.close()

    def later(self, coro_fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``coro_fn()`` on the loop thread when the run closes (before the loop itself stops)."""
        self.stack.callback(lambda: self.loop.run(coro_fn(), timeout=60))

    # -- services --------------------------------------------------------------------------------------------

    def start_ours(self) -> tuple[Target, httpx.Client]:
        progress(f"starting our service (pool size {self.config.pool_size})")
        ours = start_ours(self.workdir / "skg", self.config.pool_size, self.token, self.config.checkpoint)
        self.stack.callback(ours.process.stop)
        client = self.stack.enter_context(ours.client())
        wait_http_ok(ours.process, ours.url + "/readyz", ours.headers, STARTUP_TIMEOUT)
        self.result["services"]["serverless_kernel_gateway"] = {
            "url": ours.url,
            "pid": ours.process.pid,
            "pool_size": self.config.pool_size,
            "checkpoint_per_cell": self.config.checkpoint,
            "kernelspec_argv": kernelspec_argv(client),
        }
        return ours, client

    def start_jkg(self, info: Json) -> tuple[Target, httpx.Client]:
        home = self.workdir / "jkg-home"  # its cwd: nothing of this project in it
        home.mkdir()
        progress("starting jupyter-kernel-gateway")
        jkg = start_jkg(self.config.jkg_venv, home, self.token)
        self.stack.callback(jkg.process.stop)
        client = self.stack.enter_context(jkg.client())
        self.result["services"]["jupyter_kernel_gateway"] = {
            "url": jkg.url,
            "pid": jkg.process.pid,
            "venv": str(self.config.jkg_venv),
            "module": info["module"],
            "python": info["python"],
            "versions": info["versions"],
            "kernelspec_argv": kernelspec_argv(client),
        }
        return jkg, client

    def raw_kernel(self, transport: str) -> RawKernel:
        raw = RawKernel(transport, self.workdir)
        self.later(raw.stop)
        self.loop.run(raw.start(), timeout=STARTUP_TIMEOUT + 10)
        return raw

    def channels(self, target: Target, kernel_ids: Sequence[str]) -> list[Channels]:
        channels = self.loop.run(open_all(target, kernel_ids), timeout=STARTUP_TIMEOUT)
        self.later(lambda: close_all(channels))
        return channels

    # -- measures --------------------------------------------------------------------------------------------

    def latencies(self, ours: Target, client: httpx.Client) -> None:
        """(a), (b), (c) and the HTTP floor, in alternating blocks: background load hits all of them alike."""
        cfg = self.config
        raw = {t: self.raw_kernel(t) for t in ("ipc", "tcp")}
        rest_session = create_session(client)
        check_two(rest_execute(client, rest_session)[1])
        ws_kernel = create_kernel(client)
        [ws] = self.channels(ours, [ws_kernel])
        # Taking two kernels started two more in the background: let the pool refill before timing anything.
        wait_pool_full(ours, client)
        time.sleep(1.0)

        measures: dict[str, Callable[[int], list[float]]] = {
            "raw_jupyter_client_ipc": lambda n: self.loop.run(timed_block(raw["ipc"].execute, n)),
            "raw_jupyter_client_tcp": lambda n: self.loop.run(timed_block(raw["tcp"].execute, n)),
            "http_floor_healthz": lambda n: [healthz(client) for _ in range(n)],
            "rest_execute": lambda n: [rest_execute(client, rest_session)[0] for _ in range(n)],
            "websocket_execute": lambda n: self.loop.run(timed_block(ws.execute, n)),
        }
        progress(f"(a)(b)(c) latency: {', '.join(measures)}: {cfg.warmup} warm-up + {cfg.runs} runs each")
        samples: dict[str, list[float]] = {name: [] for name in measures}
        for measure in measures.values():
            measure(cfg.warmup)
        block = -(-cfg.runs // cfg.rounds)
        for _ in range(cfg.rounds):
            for name, measure in measures.items():
                samples[name] += measure(min(block, cfg.runs - len(samples[name])))
        for name, values in samples.items():
            self.result["latency_ms"][name] = latency_stats(values)
            progress(f"    {name}: {self.result['latency_ms'][name]}")
        self.result["latency_ms"]["raw_jupyter_client_ipc"]["transport"] = "ipc (as the service)"
        self.result["latency_ms"]["raw_jupyter_client_tcp"]["transport"] = "tcp (jupyter_client's default)"
        for kernel in raw.values():
            self.loop.run(kernel.stop(), timeout=60)
        self.loop.run(ws.close(), timeout=30)
        for sid in (rest_session, ws_kernel):
            client.delete(f"/sessions/{sid}")

    def new_sessions(self, ours: Target, client: httpx.Client) -> None:
        n = self.config.new_session_samples
        progress(f"(d) POST /execute without a session x {n}, the pool refilled before each")
        samples: list[float] = []
        for _ in range(n):
            wait_pool_full(ours, client)
            time.sleep(0.3)  # let the refilled kernel settle
            elapsed, first = rest_execute(client, None)
            check_two(first)
            samples.append(elapsed)
            client.delete(f"/sessions/{first['session']}")
        self.result["new_session_ms"] = latency_stats(samples)
        progress(f"    {self.result['new_session_ms']}")

        # For comparison: a kernel's first cell costs more than its later ones even with no HTTP in between.
        progress(f"(d) for comparison: raw jupyter_client first execute on a fresh kernel x {n}")
        firsts: list[float] = []
        for _ in range(n):
            raw = self.raw_kernel("ipc")
            time.sleep(0.3)
            firsts.append(self.loop.run(raw.execute(), timeout=REQUEST_TIMEOUT + 5))
            self.loop.run(raw.stop(), timeout=60)
        self.result["raw_first_execute_on_fresh_kernel_ms"] = latency_stats(firsts)
        progress(f"    {self.result['raw_first_execute_on_fresh_kernel_ms']}")

    def idle_sessions(self, target: Target, client: httpx.Client, memory: Json, pooled: bool) -> list[str]:
        progress(f"(f) {target.name}: {max(LEVELS)} sessions")
        kernel_ids = [create_kernel(client) for _ in range(max(LEVELS))]
        channels = self.channels(target, kernel_ids)  # one execute each, then they idle
        if pooled:
            wait_pool_full(target, client)
        time.sleep(1.0)
        memory["8_idle_sessions"] = process_memory(target.process.pid)
        progress(f"    memory with 8 idle sessions: {memory['8_idle_sessions']}")
        self.loop.run(close_all(channels), timeout=30)
        return kernel_ids

    def throughput(self, services: Sequence[tuple[str, Target, list[str], list[str]]]) -> None:
        """(e): for each level, each service in turn, so that load from elsewhere hits them alike. Raw
        jupyter_client loops on kernels of this process show the ceiling that the kernels themselves set."""
        duration = self.config.duration
        progress(f"(e) throughput: levels {list(LEVELS)}, {duration:g} s each")
        plans: list[tuple[str, CpuSampler, list[Callable[[], Awaitable[float]]]]] = []
        opened: list[Channels] = []
        raw = [self.raw_kernel("ipc") for _ in range(max(LEVELS))]
        raw_pids = [k.pid for k in raw if k.pid is not None]
        for kernel in raw:
            self.loop.run(timed_block(kernel.execute, 5), timeout=STARTUP_TIMEOUT)
        plans.append(("raw_jupyter_client", lambda: (None, pids_cpu_seconds(raw_pids)), [k.execute for k in raw]))
        for name, target, kernel_ids, rest_ids in services:
            sampler: CpuSampler = functools.partial(cpu_seconds, target.process.pid)
            channels = self.channels(target, kernel_ids)
            opened += channels
            plans.append((f"{name}_websocket", sampler, [ch.execute for ch in channels]))
            if rest_ids:
                # Sessions of their own: iopub of a REST cell also goes to every WebSocket of its session,
                # and a WebSocket that nobody reads would fill up and miss the server's keepalive pings.
                loops = RestLoops(target, len(rest_ids))
                self.later(loops.close)
                self.loop.run(loops.warm(rest_ids), timeout=STARTUP_TIMEOUT)
                plans.append((f"{name}_rest", sampler, loops.loops(rest_ids)))
        for key, *_ in plans:
            self.result["throughput"][key] = {}
        for level in LEVELS:
            for key, sampler, requests in plans:
                progress(f"    {key}: {level} session(s)")
                stats = self.loop.run(
                    run_loops(requests[:level], duration, sampler), timeout=duration + THROUGHPUT_GRACE + 10
                )
                self.result["throughput"][key][str(level)] = stats
                progress(
                    f"      {stats['executes_per_second']}/s, p50 {stats['latency_ms'].get('p50')} ms, "
                    f"server {stats['server_process_cpu_ms_per_execute']} + kernels "
                    f"{stats['kernels_cpu_ms_per_execute']} CPU ms/execute, "
                    f"slowest/fastest session {stats['slowest_over_fastest_session']}"
                )
                time.sleep(0.5)
        self.loop.run(close_all(opened), timeout=30)
        for kernel in raw:
            self.loop.run(kernel.stop(), timeout=60)

    def run(self) -> Json:
        cfg = self.config
        jkg_info = None
        if not cfg.skip_jkg:
            # Before anything is timed: a first run installs it, which takes a while.
            jkg_info = ensure_jkg_venv(cfg.jkg_venv, self.workdir)
            self.result["environment"]["jupyter_kernel_gateway"] = jkg_info["versions"]["jupyter-kernel-gateway"]

        ours, client = self.start_ours()
        wait_pool_full(ours, client)
        time.sleep(1.0)
        memory: Json = {"0_sessions": process_memory(ours.process.pid)}
        self.result["memory"]["serverless_kernel_gateway"] = memory
        progress(f"(f) memory with 0 sessions: {memory['0_sessions']}")

        self.latencies(ours, client)
        self.new_sessions(ours, client)
        services: list[tuple[str, Target, list[str], list[str]]] = [
            ("ours", ours, self.idle_sessions(ours, client, memory, pooled=True), [])
        ]

        jkg = jkg_client = None
        if jkg_info is not None:
            jkg, jkg_client = self.start_jkg(jkg_info)
            time.sleep(1.0)
            jkg_memory: Json = {"0_sessions": process_memory(jkg.process.pid)}
            self.result["memory"]["jupyter_kernel_gateway"] = jkg_memory
            jkg_kernels = self.idle_sessions(jkg, jkg_client, jkg_memory, pooled=False)
            progress(f"jupyter-kernel-gateway: WebSocket latency, {cfg.warmup} warm-up + {cfg.runs} runs")
            [ch] = self.channels(jkg, jkg_kernels[:1])
            self.loop.run(timed_block(ch.execute, cfg.warmup))
            stats = latency_stats(self.loop.run(timed_block(ch.execute, cfg.runs)))
            self.result["latency_ms"]["jkg_websocket_execute"] = stats
            progress(f"    {stats}")
            self.loop.run(ch.close(), timeout=30)
            services.append(("jkg", jkg, jkg_kernels, []))

        services[0][3].extend(create_session(client) for _ in range(max(LEVELS)))
        self.throughput(services)

        for sid in services[0][2] + services[0][3]:
            client.delete(f"/sessions/{sid}")
        wait_pool_full(ours, client)
        time.sleep(1.0)
        memory["0_sessions_after_load"] = process_memory(ours.process.pid)
        progress(f"(f) memory with 0 sessions after the load: {memory['0_sessions_after_load']}")

        self.result["environment"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        self.result["targets"] = targets(self.result)
        self.result["notes"] = [
            "Latencies: client-observed wall time of one 1+1 cell, from sending it to having both its execute_reply "
            "and its iopub status idle. Raw, REST, WebSocket and /healthz samples were taken in alternating blocks.",
            "Throughput: one closed loop per session (the next execute when the last is done), all in this one "
            "client process; levels alternate between the services.",
            f"One machine with {os.cpu_count()} CPUs runs the client, the servers and all kernels; other workloads "
            "on it make the numbers noisy (see loadavg_at_start / loadavg_at_end).",
            "Memory: process_rss_mib is the server process alone; tree_* add its child processes (kernels, and "
            "for this service its warm pool); PSS shares shared pages out among the processes.",
            "The raw baseline includes jupyter_client's own client-side work (message parsing with dates, two "
            "queues), which the WebSocket client here does not do; raw_jupyter_client throughput shows the "
            "ceiling that the kernels themselves set on this machine.",
        ]
        jkg_ws = self.result["latency_ms"].get("jkg_websocket_execute", {}).get("p50")
        if jkg_ws is not None and jkg_ws > 30:
            self.result["notes"].append(
                f"jupyter-kernel-gateway's WebSocket round trip (p50 {jkg_ws} ms) is in the range of Nagle's "
                "algorithm meeting delayed ACKs: tornado leaves TCP_NODELAY off on a WebSocket unless the handler "
                "calls set_nodelay(True), which neither jupyter_server nor jupyter-kernel-gateway do. Its "
                "throughput per session is bounded by that wait rather than by CPU."
            )
        return self.result


def main(argv: list[str] | None = None) -> int:
    config = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        with sigterm_as_exit():
            bench = Bench(config)
            try:
                result = bench.run()
            finally:
                bench.close()
    except (BenchError, subprocess.SubprocessError, httpx.HTTPError, OSError, TimeoutError) as exc:
        print(f"bench_gateway: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    text = json.dumps(result, indent=2)
    print(text)
    config.output.parent.mkdir(parents=True, exist_ok=True)
    config.output.write_text(text + "\n")
    progress(f"written to {config.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
