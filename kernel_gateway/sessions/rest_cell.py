"""One REST cell on a session: send it through the session's cell queue, wait for it (interrupting, then
replacing the kernel past its timeout), and answer once its checkpoint committed."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from notebook_state.checkpoint import CheckpointOutcome, CheckpointStatus
from notebook_state.errors import LeaseLost

from ..kernels.kernel import KernelDied
from ..types import Channel
from .acks import CHECKPOINT_FAILED
from .errors import LeaseUncertain
from .execution import CellRun, ExecutionResult, ExecutionStatus, OutputCallback
from .session import KERNEL_DIED_NOTICE, Session

TIMEOUT_RESTART_NOTICE = "the cell did not stop after an interrupt, so its kernel was replaced"


async def run_rest_cell(
    session: Session,
    code: str,
    timeout: float,
    output_limit: int,
    interrupt_grace: float,
    on_output: OutputCallback | None = None,
) -> ExecutionResult:
    async with session.lock:  # REST cells of one session run one at a time
        await session.kernel_ready()
        notices = session.take_notices()
        restored = session.take_restore()
        run = CellRun(output_limit, on_output)
        kernel = session.kernel
        msg = session.kernel.new_message(
            Channel.SHELL,
            "execute_request",
            {
                "code": code,
                "silent": False,
                "store_history": True,
                "user_expressions": {},
                "allow_stdin": False,  # input() fails at once (StdinNotImplementedError) instead of hanging
                "stop_on_error": True,
            },
        )
        session.route(msg.msg_id, run)
        session.last_activity = time.time()
        try:
            checkpoint = session.cells.submit(run, msg)
            result = await _await_cell(session, run, timeout, interrupt_grace)
            outcome = await checkpoint if not run.kernel_died else None
        except KernelDied:
            run.abort()
            result, outcome = run.result(session.id), None
        finally:
            session.unroute(msg.msg_id)
            session.last_activity = time.time()
        if session.persistence is not None and session.persistence.lost:
            raise LeaseLost(session.id, cell=session.persistence.lost_cell)
        committed = isinstance(outcome, CheckpointOutcome) and outcome.status is CheckpointStatus.COMMITTED
        if not committed and session.refusal() is not None:
            # The lease lapsed while the cell ran: its kernel is dropped here with whatever it did, and this
            # replica may no longer be the session's owner. Not a result: the client may send it again,
            # unless a commit was sent whose answer was lost.
            uncertain = session.persistence is not None and session.persistence.state.uncertain
            raise LeaseUncertain(session.id, cell="unknown" if uncertain else "not saved")
        out_of_memory = kernel.death_notice() if run.kernel_died else None
        if out_of_memory is not None and result.status is not ExecutionStatus.TIMEOUT:
            # The cell itself went over the memory limit: this reply says so, and how the session came back
            # (the fresh kernel and its restore, which the replacement under way brings).
            result.status = ExecutionStatus.ERROR
            result.error = {"ename": "MemoryLimitExceeded", "evalue": out_of_memory, "traceback": []}
            result.kernel_restarted = True
            session.discard_notice(out_of_memory)
            await session.kernel_ready()
            notices += session.take_notices()
            restored = session.take_restore() or restored
        elif run.kernel_died and result.status is not ExecutionStatus.TIMEOUT:
            result.status = ExecutionStatus.ERROR
            result.error = {"ename": "KernelDied", "evalue": KERNEL_DIED_NOTICE, "traceback": []}
            result.kernel_restarted = True
            # This reply reports the death; what the replacement brings (a restore) goes to the next one.
            session.discard_notice(KERNEL_DIED_NOTICE)
        result.notices = notices + result.notices
        if notices:
            result.kernel_restarted = True
        if isinstance(outcome, CheckpointOutcome):
            result.checkpoint = outcome.to_json()
            _report_checkpoint(session, result, outcome)
        if restored is not None:
            result.restored = restored.to_json()
        return result


def _report_checkpoint(session: Session, result: ExecutionResult, outcome: CheckpointOutcome) -> None:
    """A cell whose checkpoint failed is never reported as a plain success; what the kernel could not capture
    as asked (aliasing lost, unserialisable values) is named."""
    if outcome.status is CheckpointStatus.FAILED:
        saved = session.persistence.state.committed_count if session.persistence is not None else 0
        reason = (
            f"the cell ran, but its checkpoint failed ({outcome.error or 'unknown error'}): a restart or move "
            f"of this session resumes from execution count {saved}"
        )
        if result.status is ExecutionStatus.OK:
            result.status = ExecutionStatus.ERROR
            result.error = {"ename": CHECKPOINT_FAILED, "evalue": reason, "traceback": []}
        else:
            result.notices.append(reason)
    result.notices.extend(f"checkpoint: {w}" for w in outcome.warnings)


async def _await_cell(session: Session, run: CellRun, timeout: float, interrupt_grace: float) -> ExecutionResult:
    kernel = session.kernel
    try:
        async with asyncio.timeout(timeout):  # not wait_for: no task of its own for every cell
            await run.done.wait()
        return run.result(session.id)
    except TimeoutError:
        pass
    await kernel.interrupt()
    error: dict[str, Any] = {
        "ename": "TimeoutError",
        "evalue": f"the cell ran longer than {timeout:g} s and was interrupted",
        "traceback": [],
    }
    try:
        # asyncio.timeout, not wait_for: Python 3.11's wait_for returns a cell that ends in the turn of a cancel
        # (the request's task cancelled at shutdown) and loses the cancel.
        async with asyncio.timeout(interrupt_grace):
            await run.done.wait()
        result = run.result(session.id)
    except TimeoutError:
        await session.replace_kernel(TIMEOUT_RESTART_NOTICE)
        result = run.result(session.id)
        result.kernel_restarted = True
        result.notices.extend(session.take_notices())
        error["evalue"] += "; it did not stop, so its kernel was replaced"
    result.status = ExecutionStatus.TIMEOUT
    result.error = error
    return result
