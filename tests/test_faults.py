"""The fault suite: counter cells over REST and the WebSocket while a replica is killed, paused or cut off from
Redis, and while Redis restarts or fails over. From the client side: no acknowledged cell is lost, no cell is
run twice, no request hangs, and both faces are served again (within a generous deadline: the measured
unavailability of each fault is tests/fault_bench.py's job, reported in docs/reliability.md).

One rig (Redis master + replica, two replicas behind partitionable proxies) serves every case, in order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.fault_rig import CASES, Fault, Rig, run_case, running_rig


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    with running_rig(tmp_path_factory.mktemp("faults")) as r:
        yield r


@pytest.mark.timeout(600)
@pytest.mark.parametrize(("name", "make"), CASES, ids=["kill9", "pause", "partition", "redis-restart", "failover"])
def test_no_acknowledged_cell_is_lost_or_run_twice(rig: Rig, name: str, make: Callable[[Rig], Fault]) -> None:
    result = run_case(rig, name, make(rig))
    print(f"\n{name}: unavailable {result.unavailable} s, outcomes {result.outcomes}")
    assert result.problems == {"rest": [], "ws": []}
