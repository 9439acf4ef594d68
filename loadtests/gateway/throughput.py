"""Executes per second with 1 to N sessions at once, each a closed loop (the next execute when the last is
done), all from this one client process: raw jupyter_client on N kernels of its own (the ceiling the kernels
themselves set on this machine), this service over WebSockets and over REST, and jupyter-kernel-gateway over
WebSockets. Levels alternate between them, so that load from elsewhere hits them alike."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .clients import AsyncRest, Channels, Request, close_all, timed_block
from .config import MAX_REQUESTS_PER_LOOP, STARTUP_TIMEOUT, THROUGHPUT_GRACE, Json
from .context import Run, progress
from .processes import Target
from .sampling import CpuReader, CpuTally, latency_stats, pids_cpu


@dataclass
class Plan:
    key: str
    cpu: Mapping[str, CpuReader]
    requests: list[Request]


async def run_loops(loops: Sequence[Request], duration: float, tally: CpuTally) -> Json:
    """Each request function in a loop of its own for ``duration`` seconds: executes per second overall."""
    counts = [0] * len(loops)
    latencies: list[float] = []
    deadline = 0.0

    async def loop(i: int, request: Request) -> None:
        while counts[i] < MAX_REQUESTS_PER_LOOP and time.perf_counter() < deadline:
            latencies.append(await request())
            counts[i] += 1

    client_cpu_before = time.process_time()
    tally.start()
    started = time.perf_counter()
    deadline = started + duration
    async with asyncio.timeout(duration + THROUGHPUT_GRACE):
        await asyncio.gather(*(loop(i, request) for i, request in enumerate(loops)))
    elapsed = time.perf_counter() - started
    total = sum(counts)
    tally.stop(total)
    client_cpu = time.process_time() - client_cpu_before
    return {
        "sessions": len(loops),
        "executes": total,
        "seconds": round(elapsed, 3),
        "executes_per_second": round(total / elapsed, 1),
        "per_session": counts,
        "slowest_over_fastest_session": round(min(counts) / max(counts), 2) if max(counts) else None,
        "latency_ms": latency_stats(latencies),
        "cpu_ms_per_execute": tally.per_execute_ms(),
        # 100 = one core: the whole client process (it also runs raw jupyter_client's side of the raw baseline).
        "client_cpu_percent": round(100.0 * client_cpu / elapsed, 1),
    }


def measure(run: Run, services: Sequence[tuple[str, Target, list[str], list[str]]]) -> None:
    """``services``: (key, gateway, kernel ids for WebSockets, session ids for REST loops: may be empty)."""
    cfg = run.config
    levels = cfg.levels
    progress(f"throughput: levels {list(levels)}, {cfg.duration:g} s each")
    raw = [run.raw_kernel("ipc") for _ in range(max(levels))]
    for kernel in raw:
        run.loop.run(timed_block(kernel.execute, 5), timeout=STARTUP_TIMEOUT)
    plans = [Plan("raw_jupyter_client", {"kernels": pids_cpu([k.pid for k in raw])}, [k.execute for k in raw])]
    opened: list[Channels] = []
    for name, target, kernel_ids, rest_ids in services:
        channels = run.channels(target, kernel_ids)
        opened += channels
        plans.append(Plan(f"{name}_websocket", run.service_cpu(target), [ch.execute for ch in channels]))
        if rest_ids:
            # Sessions of their own: iopub of a REST cell also goes to every WebSocket of its session,
            # and a WebSocket that nobody reads would fill up and miss the server's keepalive pings.
            rest = AsyncRest(target, len(rest_ids))
            run.later(rest.close)
            run.loop.run(rest.warm(rest_ids), timeout=STARTUP_TIMEOUT)
            plans.append(Plan(f"{name}_rest", run.service_cpu(target), rest.loops(rest_ids)))
    for plan in plans:
        run.result["throughput"][plan.key] = {}
    for level in levels:
        for plan in plans:
            stats = run.loop.run(
                run_loops(plan.requests[:level], cfg.duration, CpuTally(plan.cpu)),
                timeout=cfg.duration + THROUGHPUT_GRACE + 10,
            )
            run.result["throughput"][plan.key][str(level)] = stats
            progress(
                f"    {plan.key} x {level}: {stats['executes_per_second']}/s, p50 {stats['latency_ms'].get('p50')} "
                f"ms, CPU ms per execute {stats['cpu_ms_per_execute']}, client {stats['client_cpu_percent']}%"
            )
            time.sleep(0.2)
    run.loop.run(close_all(opened), timeout=30)
    for kernel in raw:
        run.loop.run(kernel.stop(), timeout=60)
