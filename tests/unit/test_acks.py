"""The WebSocket's acknowledgement gate, as data: what is held, and what each checkpoint outcome releases."""

from __future__ import annotations

from kernel_gateway.sessions.acks import CHECKPOINT_FAILED, AckGate
from kernel_gateway.types import Channel, KernelMessage
from notebook_state.checkpoint import CheckpointOutcome, CheckpointStatus


def reply(cell: str, status: str = "ok") -> KernelMessage:
    return KernelMessage(Channel.SHELL, {"msg_type": "execute_reply"}, {"msg_id": cell}, {}, {"status": status},
                         raw=[b"wire"])  # fmt: skip


def idle(cell: str) -> KernelMessage:
    return KernelMessage(Channel.IOPUB, {"msg_type": "status"}, {"msg_id": cell}, {}, {"execution_state": "idle"})


def output(cell: str) -> KernelMessage:
    return KernelMessage(Channel.IOPUB, {"msg_type": "stream"}, {"msg_id": cell}, {}, {"text": "1"})


def outcome(status: CheckpointStatus) -> CheckpointOutcome:
    return CheckpointOutcome(status, error="disk full" if status is CheckpointStatus.FAILED else None)


class Gate:
    def __init__(self) -> None:
        self.sent: list[KernelMessage] = []
        self.gate = AckGate(self.sent.append)

    def kernel_says(self, *msgs: KernelMessage) -> None:
        for msg in msgs:
            if not self.gate.hold(msg):
                self.sent.append(msg)


def test_outputs_flow_but_the_reply_and_idle_wait_for_the_commit() -> None:
    g = Gate()
    g.gate.watch("c1")
    g.kernel_says(output("c1"), reply("c1"), idle("c1"))
    assert [m.msg_type for m in g.sent] == ["stream"]
    g.gate.settle("c1", outcome(CheckpointStatus.COMMITTED))
    assert [m.msg_type for m in g.sent] == ["stream", "execute_reply", "status"]
    assert g.gate.waiting == 0


def test_unwatched_cells_and_other_messages_pass() -> None:
    g = Gate()
    g.kernel_says(reply("rest-cell"), idle("rest-cell"))
    assert len(g.sent) == 2


def test_a_pending_cell_waits_until_a_later_commit_lands_then_all_go_in_order() -> None:
    g = Gate()
    for cell in ("c1", "c2"):
        g.gate.watch(cell)
        g.kernel_says(reply(cell), idle(cell))
    g.gate.settle("c1", outcome(CheckpointStatus.PENDING))
    assert g.sent == []
    g.gate.settle("c2", outcome(CheckpointStatus.COMMITTED))
    assert [m.parent_id for m in g.sent] == ["c1", "c1", "c2", "c2"]


def test_a_pending_cell_is_released_when_a_flush_lands() -> None:
    g = Gate()
    g.gate.watch("c1")
    g.kernel_says(reply("c1"), idle("c1"))
    g.gate.settle("c1", outcome(CheckpointStatus.PENDING))
    g.gate.landed()
    assert [m.msg_type for m in g.sent] == ["execute_reply", "status"]


def test_a_failed_checkpoint_turns_an_ok_reply_into_an_error_the_frontend_shows() -> None:
    g = Gate()
    g.gate.watch("c1")
    g.kernel_says(reply("c1"), idle("c1"))
    g.gate.settle("c1", outcome(CheckpointStatus.FAILED))
    sent_reply = g.sent[0]
    assert sent_reply.content["status"] == "error"
    assert sent_reply.content["ename"] == CHECKPOINT_FAILED
    assert "disk full" in sent_reply.content["evalue"]
    assert sent_reply.raw is None  # re-encoded, not the kernel's ok bytes
    assert g.sent[1].msg_type == "status"


def test_a_cell_fenced_off_or_a_session_closing_releases_nothing() -> None:
    g = Gate()
    for cell in ("lost", "closing"):
        g.gate.watch(cell)
        g.kernel_says(reply(cell), idle(cell))
    g.gate.drop("lost")
    assert g.gate.clear() == ["closing"]
    g.gate.landed()
    assert g.sent == []


def test_an_aborted_cell_with_nothing_to_commit_is_released() -> None:
    g = Gate()
    g.gate.watch("c1")
    g.kernel_says(reply("c1", "aborted"), idle("c1"))
    g.gate.settle("c1", None)
    assert len(g.sent) == 2
