"""Background loops are supervised: one that fails is logged and started again, never silently gone."""

from __future__ import annotations

import asyncio
import logging

import pytest

from kernel_gateway.sessions.housekeeping import supervise


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
