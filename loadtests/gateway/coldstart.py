"""Time to a first result where no warm kernel is ready for it: a new session on a warm pool, a burst of new
sessions larger than the pool (those beyond it find the pool empty), and a replica's cold start: from exec of a
fresh process (as Knative scales from zero) to the first result of a session it restores from a shared Redis."""

from __future__ import annotations

import asyncio
import time

import httpx

from loadtests.common import BenchError

from .clients import AsyncRest, check_result, delete_session, rest_execute
from .config import EVICT_IDLE_AFTER, EVICTION_TIMEOUT, REQUEST_TIMEOUT, STARTUP_TIMEOUT, Json
from .context import Run, progress
from .processes import Target, wait_pool_full, wait_stored
from .sampling import latency_stats

SETTLE = 0.3  # seconds for a refilled pool kernel to settle before a new session takes it


def new_session_pool_warm(run: Run, ours: Target, client: httpx.Client) -> Json:
    """``POST /execute`` without a session, the pool refilled before each."""
    n = run.config.new_session_samples
    progress(f"new session, pool warm: POST /execute without a session x {n}")
    samples: list[float] = []
    for _ in range(n):
        wait_pool_full(ours, client)
        time.sleep(SETTLE)
        elapsed, first = rest_execute(client, None)
        check_result(first)
        samples.append(elapsed)
        delete_session(client, str(first["session"]))
    stats = latency_stats(samples)
    progress(f"    {stats}")
    return stats


def raw_first_execute(run: Run) -> Json:
    """For comparison: a kernel's first cell costs more than its later ones even with no HTTP in between."""
    n = run.config.new_session_samples
    progress(f"raw jupyter_client: first execute on a fresh kernel x {n}")
    firsts: list[float] = []
    for _ in range(n):
        raw = run.raw_kernel("ipc")
        time.sleep(SETTLE)
        firsts.append(run.loop.run(raw.execute(), timeout=REQUEST_TIMEOUT + 5))
        run.loop.run(raw.stop(), timeout=60)
    return latency_stats(firsts)


def new_session_pool_empty(run: Run, ours: Target, client: httpx.Client) -> Json:
    """Bursts of pool size + extra concurrent ``POST /execute`` without a session, the pool full before each.
    Per burst, the fastest pool-size requests are taken to have had a warm kernel; the rest found none."""
    cfg = run.config
    size = cfg.pool_size + cfg.burst_extra
    progress(f"new session, pool empty: {cfg.bursts} burst(s) of {size} on a pool of {cfg.pool_size}")
    rest = AsyncRest(ours, size)
    run.later(rest.close)
    every: list[float] = []
    beyond: list[float] = []
    for _ in range(cfg.bursts):
        wait_pool_full(ours, client)
        time.sleep(SETTLE)
        replies = run.loop.run(_burst(rest, size), timeout=STARTUP_TIMEOUT * 2)
        times = sorted(elapsed for elapsed, _ in replies)
        every += times
        beyond += times[cfg.pool_size :]
        for _, reply in replies:
            delete_session(client, str(reply["session"]))
    result = {
        "burst_size": size,
        "pool_size": cfg.pool_size,
        "bursts": cfg.bursts,
        "beyond_pool_ms": latency_stats(beyond),
        "whole_burst_ms": latency_stats(every),
    }
    progress(f"    beyond the pool: {result['beyond_pool_ms']}")
    wait_pool_full(ours, client)
    return result


async def _burst(rest: AsyncRest, size: int) -> list[tuple[float, Json]]:
    return list(await asyncio.gather(*(rest.execute(None) for _ in range(size))))


def _first_result(client: httpx.Client, session: str, deadline: float) -> tuple[Json, int]:
    """``x + 1`` on the session, as soon as the replica answers at all (a refused connection or a 503 while it
    starts is retried at once; bounded in time and count)."""
    for attempt in range(1, 100_000):
        try:
            response = client.post("/execute", json={"session": session, "code": "x + 1"})
            if response.status_code == 200:
                reply: Json = response.json()
                if reply.get("status") != "ok":
                    raise BenchError(f"restored session: {reply}")
                return reply, attempt
            if response.status_code != 503:
                raise BenchError(f"restored session: HTTP {response.status_code}: {response.text[:500]}")
        except httpx.TransportError:
            pass
        if time.perf_counter() > deadline:
            break
        time.sleep(0.005)
    raise BenchError("the cold replica gave no result in time")


def replica_cold_start(run: Run) -> Json:
    """A seed replica makes a session (``x = 41``) and evicts it to the run's Redis, then stops. Each sample
    execs a fresh replica and asks it for ``x + 1``; it evicts the session again before it is stopped."""
    cfg = run.config
    extra = ("--evict-idle-after", f"{EVICT_IDLE_AFTER:g}")
    seed, seed_client = run.start_ours("skg-seed", *extra, redis=True)
    _, reply = rest_execute(seed_client, None, "x = 41")
    session = str(reply["session"])
    wait_stored(seed_client, [session], EVICTION_TIMEOUT)
    seed.process.stop()
    spec = run.spec(redis=True)
    progress(f"replica cold start x {cfg.coldstart_samples}: exec to the first result of a restored session")
    samples: list[Json] = []
    for i in range(cfg.coldstart_samples):
        name = f"skg-cold-{i}"
        started = time.perf_counter()
        proc = spec.spawn(name, run.workdir / name, *extra)
        run.stack.callback(proc.stop)
        try:
            if not proc.listening.wait(STARTUP_TIMEOUT) or proc.url is None:
                raise BenchError(f"{name} did not start:\n{proc.tail()}")
            listening = time.perf_counter()
            with httpx.Client(
                base_url=proc.url, headers={"Authorization": f"token {run.token}"}, timeout=STARTUP_TIMEOUT
            ) as client:
                reply, attempts = _first_result(client, session, started + STARTUP_TIMEOUT)
                done = time.perf_counter()
                check_result(reply, "42")
                samples.append(
                    {
                        "exec_to_first_result_ms": round(1000 * (done - started), 1),
                        "exec_to_listening_ms": round(1000 * (listening - started), 1),
                        "attempts": attempts,
                        "restored": reply.get("restored"),
                    }
                )
                progress(f"    {samples[-1]['exec_to_first_result_ms']} ms ({samples[-1]})")
                wait_stored(client, [session], EVICTION_TIMEOUT)
        finally:
            proc.stop()
    return {
        "store": "redis",
        "pool_size": cfg.pool_size,
        "exec_to_first_result_ms": latency_stats([s["exec_to_first_result_ms"] / 1000 for s in samples]),
        "exec_to_listening_ms": latency_stats([s["exec_to_listening_ms"] / 1000 for s in samples]),
        "samples": samples,
    }
