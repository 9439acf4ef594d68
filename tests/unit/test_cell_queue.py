"""The cell queue, in-process: one cell at a time into the kernel, each cell's after-cell step (its
checkpoint) done before the next starts, held cells aborted after an error as ipykernel would."""

from __future__ import annotations

import asyncio
from typing import Any

from kernel_gateway.sessions.cells import CellQueue
from kernel_gateway.types import Channel, KernelMessage


class Frontend:
    def __init__(self) -> None:
        self.got: list[KernelMessage] = []

    def deliver(self, msg: KernelMessage) -> None:
        self.got.append(msg)


def request(msg_id: str, stop_on_error: bool = True) -> KernelMessage:
    header = {"msg_id": msg_id, "msg_type": "execute_request"}
    return KernelMessage(Channel.SHELL, header, {}, {}, {"code": msg_id, "stop_on_error": stop_on_error})


def finish(queue: CellQueue, msg_id: str, status: str = "ok") -> None:
    parent = {"msg_id": msg_id}
    queue.observe(KernelMessage(Channel.SHELL, {"msg_type": "execute_reply"}, parent, {}, {"status": status}))
    queue.observe(KernelMessage(Channel.IOPUB, {"msg_type": "status"}, parent, {}, {"execution_state": "idle"}))


class Harness:
    def __init__(self) -> None:
        self.sent: list[str] = []
        self.events: list[str] = []
        self.replies: list[tuple[Frontend, KernelMessage]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.queue = CellQueue(self.send, self.reply, self.after_cell)

    def send(self, msg: KernelMessage) -> None:
        self.sent.append(msg.msg_id)
        self.events.append(f"run {msg.msg_id}")

    def reply(self, route: Any, msg: KernelMessage) -> None:
        self.replies.append((route, msg))

    async def after_cell(self) -> str:
        await self.release.wait()
        self.events.append("checkpoint")
        return "committed"


async def test_cells_enter_one_at_a_time_and_each_checkpoint_precedes_the_next_cell() -> None:
    h = Harness()
    h.release.clear()
    fe = Frontend()
    first = h.queue.submit(fe, request("c1"))
    second = h.queue.submit(fe, request("c2"))
    assert h.sent == ["c1"] and h.queue.busy
    finish(h.queue, "c1")
    await asyncio.sleep(0)
    assert h.sent == ["c1"], "the next cell must wait for the previous cell's checkpoint"
    h.release.set()
    assert await asyncio.wait_for(first, 10) == "committed"
    await _until(lambda: h.sent == ["c1", "c2"])
    finish(h.queue, "c2")
    assert await asyncio.wait_for(second, 10) == "committed"
    assert h.events == ["run c1", "checkpoint", "run c2", "checkpoint"]
    await asyncio.wait_for(h.queue.drained(), 10)
    assert not h.queue.busy


async def test_a_failed_cell_aborts_cells_that_were_already_waiting() -> None:
    h = Harness()
    fe = Frontend()
    h.queue.submit(fe, request("bad"))
    waiting = h.queue.submit(fe, request("held"))
    spared = h.queue.submit(fe, request("runs anyway", stop_on_error=False))
    finish(h.queue, "bad", status="error")
    assert await asyncio.wait_for(waiting, 10) is None
    aborted = [m for _, m in h.replies]
    assert [m.content["status"] for m in aborted] == ["aborted"]
    assert aborted[0].parent_header["msg_id"] == "held"
    await _until(lambda: "runs anyway" in h.sent)
    finish(h.queue, "runs anyway")
    assert await asyncio.wait_for(spared, 10) == "committed"


async def test_reset_aborts_every_held_cell_and_frees_the_running_one() -> None:
    h = Harness()
    fe = Frontend()
    running = h.queue.submit(fe, request("r"))
    held = h.queue.submit(fe, request("h", stop_on_error=False))
    h.queue.reset()
    assert await asyncio.wait_for(running, 10) is None
    assert await asyncio.wait_for(held, 10) is None
    assert [m.parent_header["msg_id"] for _, m in h.replies] == ["h"]
    assert not h.queue.busy


async def _until(condition: Any, deadline: float = 10.0) -> None:
    """Poll a condition the queue reaches through its own tasks, bounded in count and time."""
    for _ in range(int(deadline / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")
