"""Cancels that meet a kernel start or call just as it finishes: the shutdown path of a draining replica.

Each start or reply is gated by a future the test resolves, so the race is ordered by the event loop's queue,
not by time: the cancel lands in the same turn of the loop in which the awaited step finishes. Python 3.11's
``asyncio.wait_for`` then returns the result and loses the cancel. The warm pool's close() relied on its one
cancel and waited for the filler for ever (a replica that did not exit after SIGTERM, seen once in CI), and a
kernel start or call cancelled that way went on as if nothing had happened. A fork whose waiter went away
(cancelled, timed out) before the zygote answered left its kernel running for the life of the zygote. The
other waits with a timeout on the way of a cancel (the zygote's start, a REST cell's interrupt grace, a
hand-over read, the sandbox probe) lost it the same way, or left their process running.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.session import Session

from kernel_gateway.kernels import sandbox
from kernel_gateway.kernels.forked import ZygoteClient
from kernel_gateway.kernels.kernel import Kernel, KernelState
from kernel_gateway.kernels.pool import KernelPool
from kernel_gateway.sessions.execution import CellRun, ExecutionStatus
from kernel_gateway.sessions.rest_cell import _await_cell
from kernel_gateway.types import Channel, KernelMessage
from notebook_state import handover
from tests.kernel_process import alive
from tests.unit.stub_kernel import StubKernel

GUARD = 30.0  # seconds: a close that has not returned by then never will (the hang this file is about)


class _GatedStarter:
    """Each start waits, as a kernel start waits for its kernel, until the test hands it one."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.gate: asyncio.Future[StubKernel] = asyncio.get_running_loop().create_future()
        self.starts = 0

    async def __call__(self, name: str, env: Mapping[str, str] | None) -> Any:
        self.starts += 1
        self.entered.set()
        return await asyncio.wait_for(self.gate, 3600)


async def _closed_within_guard(closing: asyncio.Task[None]) -> bool:
    await asyncio.wait({closing}, timeout=GUARD)
    return closing.done()


async def test_close_as_a_start_finishes_stops_the_filler_and_shuts_that_kernel_down() -> None:
    starter = _GatedStarter()
    pool = KernelPool(starter, "python3", 2)
    pool.start()
    await asyncio.wait_for(starter.entered.wait(), GUARD)
    closing = asyncio.get_running_loop().create_task(pool.close())  # its first step runs before...
    kernel = StubKernel()
    starter.gate.set_result(kernel)  # ...the start's result reaches the filler: the cancel meets a finished start
    assert await _closed_within_guard(closing)
    assert kernel.shut_down
    assert pool.ready_count == 0
    assert starter.starts == 1  # no second kernel started after close


async def test_close_while_a_start_waits_cancels_it_and_a_later_start_does_nothing() -> None:
    starter = _GatedStarter()
    pool = KernelPool(starter, "python3", 1)
    pool.start()
    await asyncio.wait_for(starter.entered.wait(), GUARD)
    closing = asyncio.get_running_loop().create_task(pool.close())
    assert await _closed_within_guard(closing)
    assert starter.gate.cancelled()  # the start in flight was cancelled with the filler
    pool.start()
    assert pool.ready_count == 0 and starter.starts == 1


class _Wire:
    def __init__(self) -> None:
        self.sent = asyncio.Event()

    def send(self, channel: Channel, parts: list[Any]) -> None:
        self.sent.set()

    def close(self) -> None:
        pass


class _Manager:
    """As much of jupyter_client's kernel manager as a kernel that never launched uses."""

    has_kernel = False

    def __init__(self) -> None:
        self.session = Session()

    async def cleanup_resources(self) -> None:
        pass


async def test_a_call_cancelled_as_its_reply_arrives_is_cancelled() -> None:
    kernel = Kernel(_Manager(), "python3")  # type: ignore[arg-type]
    wire = _Wire()
    kernel._wire = wire  # type: ignore[assignment]
    kernel.state = KernelState.READY
    call = asyncio.get_running_loop().create_task(kernel.call(Channel.SHELL, "kernel_info_request", {}, 3600))
    await asyncio.wait_for(wire.sent.wait(), GUARD)
    (msg_id,) = kernel._calls
    reply = KernelMessage(Channel.SHELL, {"msg_type": "kernel_info_reply"}, {"msg_id": msg_id}, {}, {})
    kernel._calls[msg_id].set_result(reply)
    call.cancel()  # in the same turn as the reply: the caller (a pool closing, a session going) wants out
    (outcome,) = await asyncio.gather(call, return_exceptions=True)
    assert isinstance(outcome, asyncio.CancelledError)
    assert kernel._calls == {}
    await kernel.shutdown(now=True)


async def _silent_zygote() -> ZygoteClient:
    """A zygote that reads fork requests and never answers: the test answers for it (``ZygoteClient._answer``
    is what the client does with each line the zygote writes), so it decides when an answer arrives."""
    proc = await asyncio.create_subprocess_exec(
        "sh", "-c", "cat >/dev/null", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    return ZygoteClient(proc, {"ready": True})


async def _sent(zygote: ZygoteClient) -> int:
    """The id of the one fork request in flight, once it was written to the zygote."""
    for _ in range(100):  # the fork's first step writes the request: a turn or two of the loop
        if zygote._waiting:
            (rid,) = zygote._waiting
            return rid
        await asyncio.sleep(0)
    raise AssertionError("the fork request was never sent")


def _fork(zygote: ZygoteClient, timeout: float) -> asyncio.Task[Any]:
    fork = zygote.fork(["-f", "kernel.json"], {}, None, Path("/nonexistent"), timeout)
    return asyncio.get_running_loop().create_task(fork)


@pytest.mark.parametrize("leaves", ["cancelled", "timed out"])
async def test_a_kernel_forked_for_a_start_that_went_away_is_killed_when_its_answer_comes(leaves: str) -> None:
    zygote = await _silent_zygote()
    kernel = await asyncio.create_subprocess_exec("sleep", "600")  # stands in for the kernel the zygote forks
    try:
        fork = _fork(zygote, 3600 if leaves == "cancelled" else 0)
        rid = await _sent(zygote)
        if leaves == "cancelled":
            fork.cancel()
        (outcome,) = await asyncio.gather(fork, return_exceptions=True)
        assert isinstance(outcome, asyncio.CancelledError if leaves == "cancelled" else TimeoutError)
        assert kernel.returncode is None
        zygote._answer({"id": rid, "pid": kernel.pid})  # the zygote answers after the waiter left
        assert await asyncio.wait_for(kernel.wait(), GUARD) == -signal.SIGKILL
        assert zygote._abandoned == set()  # nothing kept for an answer that came
    finally:
        with contextlib.suppress(ProcessLookupError):
            kernel.kill()
        await kernel.wait()
        await zygote.close()


async def test_a_fork_cancelled_as_its_answer_arrives_is_cancelled_and_its_kernel_killed() -> None:
    zygote = await _silent_zygote()
    kernel = await asyncio.create_subprocess_exec("sleep", "600")
    try:
        fork = _fork(zygote, 3600)
        rid = await _sent(zygote)
        zygote._answer({"id": rid, "pid": kernel.pid})
        fork.cancel()  # in the same turn as the answer: wait_for returned the kernel and lost the cancel
        (outcome,) = await asyncio.gather(fork, return_exceptions=True)
        assert isinstance(outcome, asyncio.CancelledError)
        assert await asyncio.wait_for(kernel.wait(), GUARD) == -signal.SIGKILL
    finally:
        with contextlib.suppress(ProcessLookupError):
            kernel.kill()
        await kernel.wait()
        await zygote.close()


async def test_a_failed_fork_whose_start_went_away_leaves_nothing_behind() -> None:
    zygote = await _silent_zygote()
    try:
        fork = _fork(zygote, 3600)
        rid = await _sent(zygote)
        fork.cancel()
        await asyncio.gather(fork, return_exceptions=True)
        zygote._answer({"id": rid, "error": "no memory"})
        assert zygote._abandoned == set() and zygote._kernels == {}
    finally:
        await zygote.close()


async def test_the_zygotes_start_cancelled_as_it_says_ready_kills_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # The factory closing cancels a zygote still starting; one that got its ready line in that turn was
    # returned by wait_for and outlived the factory.
    started: list[asyncio.subprocess.Process] = []
    create = asyncio.create_subprocess_exec

    async def recorded(*argv: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        started.append(await create(*argv, **kwargs))
        return started[-1]

    monkeypatch.setattr(asyncio, "create_subprocess_exec", recorded)
    # A zygote that never says ready by itself: the test hands its ready line to the client's reader.
    start = asyncio.get_running_loop().create_task(ZygoteClient.start(["sh", "-c", "cat >/dev/null"], {}, {}, 3600))
    for _ in range(600):  # until the process runs and start() waits for its line (bounded: 30 s)
        if started and started[0].stdout is not None and started[0].stdout._waiter is not None:
            break
        await asyncio.sleep(0.05)
    (proc,) = started
    assert proc.stdout is not None and proc.stdout._waiter is not None
    proc.stdout.feed_data(b'{"ready": true}\n')
    start.cancel()  # in the same turn as the ready line
    (outcome,) = await asyncio.gather(start, return_exceptions=True)
    assert isinstance(outcome, asyncio.CancelledError)
    assert await asyncio.wait_for(proc.wait(), GUARD) == -signal.SIGKILL


class _Interrupted:
    def __init__(self) -> None:
        self.interrupted = asyncio.Event()

    async def interrupt(self) -> None:
        self.interrupted.set()


class _CellSession:
    """As much of a Session as a REST cell's wait uses."""

    id = "s"

    def __init__(self) -> None:
        self.kernel = _Interrupted()
        self.replaced = False

    async def replace_kernel(self, notice: str) -> None:
        self.replaced = True


async def test_a_rest_cell_cancelled_as_its_interrupted_cell_stops_is_cancelled() -> None:
    session = _CellSession()
    run = CellRun(1 << 20)
    wait = _await_cell(session, run, 0, 3600)  # type: ignore[arg-type]  # timed out at once, then interrupted
    cell = asyncio.get_running_loop().create_task(wait)
    await asyncio.wait_for(session.kernel.interrupted.wait(), GUARD)  # the cell now waits out the grace
    run.done.set()  # the interrupted cell stops...
    cell.cancel()  # ...in the turn the request's task is cancelled (a shutdown): wait_for returned a result
    (outcome,) = await asyncio.gather(cell, return_exceptions=True)
    assert isinstance(outcome, asyncio.CancelledError), outcome
    assert not session.replaced


async def test_a_rest_cell_whose_interrupt_stops_it_in_its_grace_is_a_timeout() -> None:
    session = _CellSession()
    run = CellRun(1 << 20)
    cell = asyncio.get_running_loop().create_task(_await_cell(session, run, 0, 3600))  # type: ignore[arg-type]
    await asyncio.wait_for(session.kernel.interrupted.wait(), GUARD)
    run.done.set()
    result = await asyncio.wait_for(cell, GUARD)
    assert result.status is ExecutionStatus.TIMEOUT and not session.replaced


async def test_a_handover_read_cancelled_as_its_thread_ends_is_cancelled(monkeypatch: pytest.MonkeyPatch) -> None:
    # The read's end in the cancel's turn: the thread's result is a future the test resolves.
    entered = asyncio.Event()
    ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def thread(fn: Any) -> str:
        entered.set()
        return await ended

    monkeypatch.setattr(asyncio, "to_thread", thread)
    read = asyncio.get_running_loop().create_task(handover.off_loop(lambda: "read", 3600))
    await asyncio.wait_for(entered.wait(), GUARD)
    ended.set_result("read")
    read.cancel()  # in the same turn: wait_for returned the read and lost the cancel
    (outcome,) = await asyncio.gather(read, return_exceptions=True)
    assert isinstance(outcome, asyncio.CancelledError), outcome


async def test_a_sandbox_probe_cancelled_while_it_runs_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    probe = asyncio.get_running_loop().create_task(
        sandbox._works(["sh", "-c", f"echo $$ > {pid_file}.tmp && mv {pid_file}.tmp {pid_file} && exec sleep 600"])
    )
    for _ in range(600):  # until the probe runs (bounded: 30 s)
        if pid_file.exists():
            break
        await asyncio.sleep(0.05)
    pid = int(pid_file.read_text())
    probe.cancel()
    (outcome,) = await asyncio.gather(probe, return_exceptions=True)
    assert isinstance(outcome, asyncio.CancelledError)
    for _ in range(600):  # killed, then reaped by the child watcher
        if not alive(pid):
            break
        await asyncio.sleep(0.05)
    assert not alive(pid)
