"""Background loops are supervised: one that fails is logged and started again, never silently gone."""

from __future__ import annotations

import asyncio
import logging

import pytest

from kernel_gateway.sessions.housekeeping import evict_idle, supervise


async def test_a_failing_loop_is_logged_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[int] = []
    third = asyncio.Event()

    async def flaky() -> None:
        runs.append(len(runs))
        if len(runs) >= 3:
            third.set()
            await asyncio.Event().wait()  # the third run keeps going
        raise RuntimeError(f"boom {len(runs)}")

    caplog.set_level(logging.ERROR)
    task = asyncio.ensure_future(supervise("flaky", flaky, backoff=0.01))
    await asyncio.wait_for(third.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(runs) == 3
    failures = [r for r in caplog.records if "flaky failed" in r.getMessage()]
    assert len(failures) == 2 and failures[0].exc_info is not None


class _Persistence:
    async def flush(self) -> bool:
        return True


class _IdleSession:
    id = "idle"
    last_activity = 0.0
    busy = False
    connections: set[object] = set()
    persistence = _Persistence()


async def test_a_cancel_swallowed_inside_an_eviction_still_stops_the_loop() -> None:
    # The replica's close cancels its background loops and waits for them. An eviction drops its session
    # through jupyter_client's kernel kill, whose asyncio.wait_for (Python 3.11) returns instead of raising
    # when the cancel lands in the turn its wait ends: made to happen here with a gate resolved in that turn.
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[None] = loop.create_future()
    releasing = asyncio.Event()

    async def release(session: object) -> None:
        releasing.set()
        await asyncio.wait_for(gate, 3600)

    sessions = {"idle": _IdleSession(), "other": _IdleSession()}
    evictor = lambda: evict_idle(sessions, 0.01, release)  # type: ignore[arg-type]  # noqa: E731
    task = loop.create_task(supervise("idle eviction", evictor, backoff=0.01))
    await asyncio.wait_for(releasing.wait(), 30)
    gate.set_result(None)
    task.cancel()  # in the same turn: wait_for swallows it
    await asyncio.wait({task}, timeout=30)  # a guard: a loop that went on never ends
    assert task.done()
