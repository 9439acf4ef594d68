"""The warm pool during the drain (SIGTERM): no new session will take a kernel then (not even one taken over
from a dead owner), so the pool stops filling at once (a start under way is cancelled), and what it holds stays
for a running session whose kernel dies.

Starts are gated by futures the test resolves, so the order is the event loop's, not the clock's."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from kernel_gateway.kernels.pool import KernelPool
from kernel_gateway.replica import open_replica
from kernel_gateway.sessions.errors import Draining
from kernel_gateway.settings import Settings
from notebook_state.store import SessionRecord
from tests.unit.stub_kernel import StubKernel

GUARD = 30.0  # seconds: a stop that has not returned by then never will


class _Starter:
    """Each start waits for a kernel until the test hands it one (``starts[i].set_result``). Through
    ``wait_for``, as a real start's steps are: a start that finished in the turn of a cancel returns its kernel."""

    def __init__(self) -> None:
        self.starts: list[asyncio.Future[StubKernel]] = []

    async def __call__(self, name: str, env: Mapping[str, str] | None, *args: Any, **kwargs: Any) -> Any:
        self.starts.append(asyncio.get_running_loop().create_future())
        return await asyncio.wait_for(self.starts[-1], 3600)

    async def started(self, count: int) -> None:
        for _ in range(1000):  # a few turns of the loop: the filler's first steps
            if len(self.starts) >= count:
                return
            await asyncio.sleep(0)
        raise AssertionError(f"{count} starts expected, {len(self.starts)} seen")


async def test_stop_filling_cancels_the_start_under_way_and_keeps_the_ready_kernels() -> None:
    starter = _Starter()
    pool = KernelPool(starter, "python3", 2)
    pool.start()
    await starter.started(1)
    kept = StubKernel()
    starter.starts[0].set_result(kept)
    await starter.started(2)
    await asyncio.wait_for(pool.stop_filling(), GUARD)
    assert starter.starts[1].cancelled()
    assert pool._filler is not None and pool._filler.done()  # nothing left that could start a kernel
    assert await pool.acquire("python3") is kept  # a running session's replacement still gets it
    pool.start()
    assert pool._filler.done() and len(starter.starts) == 2  # taking one woke no refill
    await pool.close()
    assert not kept.shut_down  # taken: the session's now


async def test_stop_filling_as_a_start_finishes_keeps_that_kernel_and_starts_no_other() -> None:
    starter = _Starter()
    pool = KernelPool(starter, "python3", 2)
    pool.start()
    await starter.started(1)
    stopping = asyncio.get_running_loop().create_task(pool.stop_filling())  # its first step runs before...
    kernel = StubKernel()
    starter.starts[0].set_result(kernel)  # ...the start's result reaches the filler: the cancel meets it
    await asyncio.wait({stopping}, timeout=GUARD)
    assert stopping.done()
    assert pool.ready_count == 1 and len(starter.starts) == 1
    await pool.close()
    assert kernel.shut_down


async def test_the_drain_stops_the_replicas_pool_filling(tmp_path: Path) -> None:
    manager = open_replica(Settings(data_dir=tmp_path, pool_size=1), lambda: "http://127.0.0.1:1").manager
    starter = _Starter()
    manager.kernels.start = starter  # type: ignore[method-assign]  # the pool's kernels come from the factory
    try:
        await manager.start()
        await starter.started(1)
        manager.draining = True  # as DrainingServer.handle_exit and the lifespan's end set it, then drain
        await asyncio.wait_for(manager.wait_idle(1.0), GUARD)
        assert starter.starts[0].cancelled()
        filler = manager.pool._filler
        assert filler is not None and filler.done() and len(starter.starts) == 1
    finally:
        await manager.close()


async def test_a_draining_replica_takes_no_session_over_from_a_dead_owner(tmp_path: Path) -> None:
    manager = open_replica(Settings(data_dir=tmp_path, pool_size=0), lambda: "http://127.0.0.1:1").manager
    try:
        now = time.time()
        await manager.store.create(SessionRecord(id="s", kernel_name="python3", created=now, last_activity=now))
        fence = await manager.store.acquire("s", "dead-replica", "http://127.0.0.1:2", 60)
        assert fence is not None
        manager.draining = True
        with pytest.raises(Draining):  # 503: the client retries, and a replica that stays takes it over
            await manager.take_over("s", fence.epoch)
        assert manager.sessions == {}
        record = await manager.store.get("s")
        assert record is not None and record.lease is not None and record.lease.owner == "dead-replica"
    finally:
        await manager.close()
