"""What a REST reply says of its cell's checkpoint, as data: a failed checkpoint is never a plain success, and
what the kernel could not capture as asked (aliasing lost) is named."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from kernel_gateway.sessions.execution import ExecutionResult, ExecutionStatus
from kernel_gateway.sessions.rest_cell import _report_checkpoint
from notebook_state.checkpoint import CheckpointOutcome, CheckpointStatus

SESSION: Any = SimpleNamespace(persistence=SimpleNamespace(state=SimpleNamespace(committed_count=4)))
ALIASING = "['a', 'b'] fail together (TypeError: no); stored one by one, aliasing lost"


def result(status: ExecutionStatus = ExecutionStatus.OK) -> ExecutionResult:
    return ExecutionResult("s", status, 5, [])


def test_a_failed_checkpoint_turns_an_ok_cell_into_an_error_naming_what_is_saved() -> None:
    r = result()
    _report_checkpoint(SESSION, r, CheckpointOutcome(CheckpointStatus.FAILED, error="ZeroDivisionError: x"))
    assert r.status is ExecutionStatus.ERROR
    assert r.error is not None and r.error["ename"] == "CheckpointFailed"
    assert "ZeroDivisionError" in r.error["evalue"] and "execution count 4" in r.error["evalue"]


def test_a_failed_checkpoint_of_a_failed_cell_keeps_the_cells_error_and_says_it_in_notices() -> None:
    r = result(ExecutionStatus.ERROR)
    r.error = {"ename": "NameError", "evalue": "x", "traceback": []}
    _report_checkpoint(SESSION, r, CheckpointOutcome(CheckpointStatus.FAILED, error="boom"))
    assert r.error["ename"] == "NameError"
    assert any("checkpoint failed (boom)" in n for n in r.notices)


def test_capture_warnings_are_named_and_a_committed_cell_stays_ok() -> None:
    r = result()
    outcome = CheckpointOutcome(CheckpointStatus.COMMITTED, warnings=[ALIASING])
    _report_checkpoint(SESSION, r, outcome)
    assert r.status is ExecutionStatus.OK
    assert r.notices == [f"checkpoint: {ALIASING}"]
    assert outcome.to_json()["warnings"] == [ALIASING]
