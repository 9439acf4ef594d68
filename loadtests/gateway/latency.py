"""Warm round trips of ``1+1``, one session at a time, and the CPU each one costs.

Every face is measured in alternating blocks (raw jupyter_client over IPC and TCP, GET /healthz as the HTTP
floor, POST /execute, the Jupyter WebSocket, jupyter-kernel-gateway's WebSocket), so that load from elsewhere on
a shared machine hits them alike. Around each block the CPU seconds of the processes involved are read (the
gateway process, its kernels, the Redis it uses; for raw, the one kernel), which gives CPU per execute: a figure
that other tenants of the machine disturb much less than wall time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import httpx

from .clients import close_all, healthz, rest_execute, timed_block
from .config import Json
from .context import Run, progress
from .processes import Target, wait_pool_full
from .sampling import CpuReader, CpuTally, children_cpu_by_pid, latency_stats, pids_cpu

Block = Callable[[int], list[float]]


def idle_cpu(run: Run, groups: Mapping[str, CpuReader], seconds: float) -> Json:
    """CPU milliseconds per second that the processes spend with nothing asked of them (pool, leases, timers):
    the background inside every per-execute figure."""
    before = {name: read() for name, read in groups.items()}
    time.sleep(seconds)
    return {name: round(1000.0 * (read() - before[name]) / seconds, 3) for name, read in groups.items()}


def measure(
    run: Run,
    ours: Target,
    client: httpx.Client,
    rest_session: str,
    ws_kernel: str,
    jkg: Target | None,
    jkg_kernel: str | None,
) -> None:
    cfg = run.config
    raw = {t: run.raw_kernel(t) for t in ("ipc", "tcp")}
    [ws] = run.channels(ours, [ws_kernel])
    rest_execute(client, rest_session)
    wait_pool_full(ours, client)
    ours_cpu = run.service_cpu(ours)

    def gateway_tally(target: Target) -> CpuTally:
        return CpuTally(run.service_cpu(target), children_cpu_by_pid(target.process.pid))

    def raw_tally(pid: int) -> CpuTally:
        read = pids_cpu([pid])
        return CpuTally({"kernels": read}, lambda: {pid: read()})

    measures: dict[str, tuple[Block, CpuTally]] = {
        "raw_jupyter_client_ipc": (
            lambda n: run.loop.run(timed_block(raw["ipc"].execute, n)),
            raw_tally(raw["ipc"].pid),
        ),
        "raw_jupyter_client_tcp": (
            lambda n: run.loop.run(timed_block(raw["tcp"].execute, n)),
            raw_tally(raw["tcp"].pid),
        ),
        "http_floor_healthz": (lambda n: [healthz(client) for _ in range(n)], CpuTally(ours_cpu)),
        "rest_execute": (lambda n: [rest_execute(client, rest_session)[0] for _ in range(n)], gateway_tally(ours)),
        "websocket_execute": (lambda n: run.loop.run(timed_block(ws.execute, n)), gateway_tally(ours)),
    }
    idle = {"serverless_kernel_gateway": idle_cpu(run, ours_cpu, 1.0 if cfg.mode == "smoke" else 3.0)}
    opened = [ws]
    if jkg is not None and jkg_kernel is not None:
        [jkg_ws] = run.channels(jkg, [jkg_kernel])
        opened.append(jkg_ws)
        jkg_cpu = run.service_cpu(jkg)
        measures["jkg_websocket_execute"] = (lambda n: run.loop.run(timed_block(jkg_ws.execute, n)), gateway_tally(jkg))
        idle["jupyter_kernel_gateway"] = idle_cpu(run, jkg_cpu, 1.0 if cfg.mode == "smoke" else 3.0)

    progress(f"latency and CPU per execute: {', '.join(measures)}: {cfg.warmup} warm-up + {cfg.runs} runs each")
    for block, _ in measures.values():
        block(cfg.warmup)
    samples: dict[str, list[float]] = {name: [] for name in measures}
    size = -(-cfg.runs // cfg.rounds)
    for _ in range(cfg.rounds):
        for name, (block, tally) in measures.items():
            n = min(size, cfg.runs - len(samples[name]))
            tally.start()
            samples[name] += block(n)
            tally.stop(n)
    latency: Json = run.result["latency_ms"]
    cpu: Json = run.result["cpu_ms_per_execute"]
    for name, (_, tally) in measures.items():
        latency[name] = latency_stats(samples[name])
        cpu[name] = tally.per_execute_ms()
        progress(f"    {name}: p50 {latency[name]['p50']} ms; CPU ms per execute {cpu[name]}")
    latency["raw_jupyter_client_ipc"]["transport"] = "ipc (as the service)"
    latency["raw_jupyter_client_tcp"]["transport"] = "tcp (jupyter_client's default)"
    cpu["idle_cpu_ms_per_second"] = idle
    for kernel in raw.values():
        run.loop.run(kernel.stop(), timeout=60)
    # Closed now: a second WebSocket on the same kernel later would leave this one unread, filling up.
    run.loop.run(close_all(opened), timeout=30)
