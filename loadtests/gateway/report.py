"""The result document: what ran where (versions, machine, git commit), its sections, and the notes that say
how each figure was taken."""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys

from loadtests.common import cpu_model, git_commit, package_version

from .config import REPO, Config, Json

SECTIONS = ("services", "latency_ms", "cpu_ms_per_execute", "throughput", "memory", "new_session")


def environment() -> Json:
    version = package_version
    return {
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(REPO),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "serverless_kernel_gateway": version("serverless-kernel-gateway"),
        "jupyter_client": version("jupyter_client"),
        "ipykernel": version("ipykernel"),
        "pyzmq": version("pyzmq"),
        "uvicorn": version("uvicorn"),
        "httpx": version("httpx"),
        "websockets": version("websockets"),
        "redis_py": version("redis"),
        "psutil": version("psutil"),
        "jupyter_kernel_gateway": None,  # filled in from its own venv
        "redis_server": None,  # filled in when the run starts one
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def skeleton(config: Config) -> Json:
    result: Json = {
        "benchmark": "bench_gateway",
        "environment": environment(),
        "config": {
            **config.as_json(),
            "client": "this one Python process: jupyter_client, a synchronous keep-alive httpx.Client (REST "
            "latency), aiohttp (REST throughput, bursts), websockets without compression (JSON text)",
        },
    }
    result.update({section: {} for section in SECTIONS})
    result["replica_cold_start"] = None
    return result


def notes(result: Json) -> list[str]:
    out = [
        "CPU per execute is the main figure: user + system CPU seconds of the gateway process ('service'), of "
        "its child processes ('kernels': session kernels, their sandbox wrappers, the warm pool) and of the "
        "redis-server it uses ('redis', --redis only), read from /proc around each measured block and divided "
        "by the executes in it. Other work on a shared machine moves it far less than wall time. idle_cpu_ms_per_"
        "second is the same processes' background with nothing asked of them; it is inside every figure.",
        "Latencies: client-observed wall time of one 1+1 cell, from sending it to having both its execute_reply "
        "and its iopub status idle. Raw, /healthz, REST and WebSocket (and jupyter-kernel-gateway's WebSocket) "
        "samples were taken in alternating blocks, one session each.",
        "Throughput: one closed loop per session, all in this one client process (which also does raw "
        "jupyter_client's client-side work for the raw baseline); levels alternate between the services.",
        f"One machine with {os.cpu_count()} CPUs runs the client, the servers and all kernels; other workloads "
        "on it make wall-time figures noisy (see loadavg_at_start / loadavg_at_end).",
        "Memory is PSS (a page shared by n processes counts 1/n in each): what n live idle sessions add to the "
        "tree of the gateway process (pool refilled before and after), per session; the same for n kernels of "
        "jupyter-kernel-gateway; and what n sessions add once evicted to the store (a service with "
        "--evict-idle-after 1, after GET /sessions/{id} says 'stored' for each).",
        "New session, pool empty: bursts of pool size + extra concurrent POST /execute without a session; the "
        "pool-size fastest of each burst are taken to have had a warm kernel, the others to have found none.",
        "Replica cold start: always with a Redis the run starts (the Knative case): from exec of a fresh "
        "replica to the first result of a session that an earlier replica evicted to Redis; the replica's warm "
        "pool fills at the same time.",
        "Raw jupyter_client and jupyter-kernel-gateway kernels get IPYTHONDIR on a tmpfs (config."
        "baseline_kernels_ipython_dir), as this service's sandboxed kernels have a tmpfs home: IPython's "
        "history database is then not fsynced to a disk for every cell in any of them.",
    ]
    jkg_ws = result.get("latency_ms", {}).get("jkg_websocket_execute", {}).get("p50")
    if jkg_ws is not None and jkg_ws > 30:
        out.append(
            f"jupyter-kernel-gateway's WebSocket round trip (p50 {jkg_ws} ms) is in the range of Nagle's "
            "algorithm meeting delayed ACKs: tornado leaves TCP_NODELAY off on a WebSocket unless the handler "
            "calls set_nodelay(True), which neither jupyter_server nor jupyter-kernel-gateway do. Its "
            "throughput per session is bounded by that wait rather than by CPU."
        )
    return out
