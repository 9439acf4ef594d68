"""Memory as PSS (a page shared by n processes counts 1/n in each, so kernels forked from one parent, or
sharing libraries, are not counted n times as RSS would): what a live idle session adds to this service's
process tree, beside what a kernel adds to jupyter-kernel-gateway's; and what idle sessions still add once they
are evicted to the store (their kernels stopped)."""

from __future__ import annotations

import time

import httpx
import psutil

from .clients import close_all, create_kernel, rest_execute
from .config import EVICT_IDLE_AFTER, EVICTION_TIMEOUT, Json
from .context import Run, progress
from .processes import Target, wait_pool_full, wait_stored
from .sampling import added, pss_mib, tree_memory

SETTLE = 1.0  # seconds for freed pages and a refilled pool to settle before a reading


def baseline(target: Target, client: httpx.Client | None) -> Json:
    if client is not None:
        wait_pool_full(target, client)
    time.sleep(SETTLE)
    return tree_memory(target.process.pid)


def live_sessions(run: Run, target: Target, client: httpx.Client, pooled: bool) -> tuple[list[str], Json]:
    """``sessions`` kernels through the Jupyter API, each used (a few executes on a WebSocket, then closed) and
    left idle; PSS of the tree before and after. Returns the kernel ids, open for more measures."""
    n = run.config.sessions
    before = baseline(target, client if pooled else None)
    kernel_ids = [create_kernel(client) for _ in range(n)]
    channels = run.channels(target, kernel_ids)
    run.loop.run(close_all(channels), timeout=30)
    after = baseline(target, client if pooled else None)
    memory = {
        "sessions": n,
        "before": before,
        "with_idle_sessions": after,
        "added_pss_mib_per_session": added(after, before, "tree_pss_mib", n),
        "added_rss_mib_per_session": added(after, before, "tree_rss_mib", n),
        "added_process_pss_mib_in_all": added(after, before, "process_pss_mib"),
    }
    progress(f"{target.name}: {n} idle sessions add {memory['added_pss_mib_per_session']} MiB PSS each")
    return kernel_ids, memory


def evicted_sessions(run: Run) -> Json:
    """A service of its own that evicts after ``EVICT_IDLE_AFTER`` idle seconds: ``sessions`` sessions each run
    a cell, are evicted (``GET /sessions/{id}`` says "stored"), and the tree's PSS is read again."""
    n = run.config.sessions
    target, client = run.start_ours("skg-evict", "--evict-idle-after", f"{EVICT_IDLE_AFTER:g}")
    redis_proc = psutil.Process(run.redis.process.pid) if run.config.redis else None
    try:
        before = baseline(target, client)
        redis_before = pss_mib([redis_proc]) if redis_proc else None
        session_ids = []
        for i in range(n):
            _, reply = rest_execute(client, None, f"x = {i}")
            session_ids.append(str(reply["session"]))
        wait_stored(client, session_ids, EVICTION_TIMEOUT)
        after = baseline(target, client)
        redis_after = pss_mib([redis_proc]) if redis_proc else None
    finally:
        target.process.stop()
    memory = {
        "sessions": n,
        "evict_idle_after_seconds": EVICT_IDLE_AFTER,
        "before": before,
        "with_evicted_sessions": after,
        "added_pss_mib_in_all": added(after, before, "tree_pss_mib"),
        "added_process_pss_mib_in_all": added(after, before, "process_pss_mib"),
        "redis_added_pss_mib": added({"pss": redis_after}, {"pss": redis_before}, "pss"),
    }
    progress(f"{n} evicted sessions add {memory['added_pss_mib_in_all']} MiB PSS in all")
    return memory
