"""The replay buffer, in-process: order kept, bounded in bytes and in messages, oldest dropped first."""

from __future__ import annotations

from kernel_gateway.sessions.replay import ReplayBuffer, message_size
from kernel_gateway.types import Channel, KernelMessage


def stream(text: str) -> KernelMessage:
    raw = [b'{"msg_type":"stream"}', b"{}", b"{}", ('{"text":"' + text + '"}').encode()]
    return KernelMessage(Channel.IOPUB, {"msg_type": "stream"}, {}, {}, {"text": text}, [], raw)


def test_keeps_order_and_empties_on_drain() -> None:
    buffer = ReplayBuffer("tab", max_bytes=10_000, max_messages=100)
    for text in "abc":
        buffer.deliver(stream(text))
    assert [m.content["text"] for m in buffer.drain()] == ["a", "b", "c"]
    assert len(buffer) == 0 and buffer.size == 0


def test_byte_bound_drops_the_oldest_first() -> None:
    one = message_size(stream("x" * 100))
    buffer = ReplayBuffer("tab", max_bytes=3 * one, max_messages=100)
    for i in range(5):
        buffer.deliver(stream(str(i) * 100))
    assert [m.content["text"][0] for m in buffer.drain()] == ["2", "3", "4"]
    assert buffer.dropped == 2


def test_message_bound_holds_too() -> None:
    buffer = ReplayBuffer("tab", max_bytes=10**9, max_messages=2)
    for text in "abcd":
        buffer.deliver(stream(text))
    assert [m.content["text"] for m in buffer.drain()] == ["c", "d"]


def test_binary_buffers_count_against_the_bound() -> None:
    msg = stream("a")
    msg.buffers = [b"\0" * 1000]
    assert message_size(msg) >= 1000
