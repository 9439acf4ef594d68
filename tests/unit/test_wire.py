"""A kernel's sockets read straight from their file descriptors (``kernels.wire``), against real ZMQ peers; and
how a kernel message is taken (signature, shape)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import zmq
import zmq.asyncio
from jupyter_client.session import DELIM, Session

from kernel_gateway.kernels import wire as wire_module
from kernel_gateway.kernels.kernel import Kernel
from kernel_gateway.kernels.wire import Wire, kernel_context, signer
from kernel_gateway.types import Channel


async def wait_for(condition: Any, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - the condition is a peer socket's state, no event to wait on
            await asyncio.sleep(0.01)


async def test_every_message_arrives_in_order_past_a_batch(tmp_path: Path) -> None:
    ctx = zmq.asyncio.Context()
    kernel_side = zmq.Context.shadow(ctx.underlying).socket(zmq.ROUTER)
    kernel_side.bind(f"ipc://{tmp_path}/shell")
    ours = ctx.socket(zmq.DEALER)
    ours.setsockopt(zmq.IDENTITY, b"svc")
    ours.connect(f"ipc://{tmp_path}/shell")
    got: list[list[bytes]] = []
    wire = Wire({Channel.SHELL: ours}, lambda channel, frames: got.append(frames))
    try:
        wire.send(Channel.SHELL, [b"hello"])
        await wait_for(lambda: kernel_side.poll(0))
        ident, body = kernel_side.recv_multipart()
        assert (ident, body) == (b"svc", b"hello")
        wire.send(Channel.SHELL, [b"<IDS|MSG>", b"", memoryview(b"buffer"), b"last"])  # one message, every frame
        await wait_for(lambda: kernel_side.poll(0))
        assert kernel_side.recv_multipart() == [b"svc", b"<IDS|MSG>", b"", b"buffer", b"last"]
        # More than one batch at once: the wire reads them all, in order, giving the loop a turn in between.
        for n in range(300):
            kernel_side.send_multipart([b"svc", str(n).encode()])
        await wait_for(lambda: len(got) == 300)
        assert [int(frames[0]) for frames in got] == list(range(300))
        # A reply that arrives while we send is not missed (the socket's FD is edge-triggered).
        kernel_side.send_multipart([b"svc", b"late"])
        wire.send(Channel.SHELL, [b"again"])
        await wait_for(lambda: len(got) == 301)
        assert got[-1] == [b"late"]
    finally:
        wire.close()
        kernel_side.close(linger=0)
        ctx.term()


async def test_a_closed_wire_stops_reading(tmp_path: Path) -> None:
    ctx = zmq.asyncio.Context()
    pub = zmq.Context.shadow(ctx.underlying).socket(zmq.PUB)
    pub.bind(f"ipc://{tmp_path}/iopub")
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"ipc://{tmp_path}/iopub")
    got: list[list[bytes]] = []
    wire = Wire({Channel.IOPUB: sub}, lambda channel, frames: got.append(frames))
    try:
        async with asyncio.timeout(30):
            while not got:  # a SUB socket drops what is published before its subscription arrives
                pub.send_multipart([b"status"])
                await asyncio.sleep(0.02)
        wire.close()
        assert sub.closed
    finally:
        wire.close()
        pub.close(linger=0)
        ctx.term()


@pytest.mark.timeout(60)  # the old send waited for the kernel: the event loop, every session of the replica, stood
async def test_a_kernel_that_does_not_read_loses_messages_past_its_queue_not_the_loop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ctx = kernel_context()
    kernel_side = zmq.Context.shadow(ctx.underlying).socket(zmq.ROUTER)
    kernel_side.setsockopt(zmq.RCVHWM, 4)
    kernel_side.bind(f"ipc://{tmp_path}/shell")  # and never read
    ours = ctx.socket(zmq.DEALER)
    ours.setsockopt(zmq.SNDHWM, 4)
    ours.connect(f"ipc://{tmp_path}/shell")
    wire = Wire({Channel.SHELL: ours}, lambda channel, frames: None)
    try:
        with caplog.at_level("WARNING"):
            for _ in range(200):  # 12.5 MiB: more than the queues and the socket's buffers hold
                wire.send(Channel.SHELL, [bytes(64 * 1024)])
        assert "message dropped" in caplog.text
    finally:
        wire.close()
        kernel_side.close(linger=0)
        ctx.destroy(linger=0)


async def test_a_kernel_message_bigger_than_the_limit_closes_its_channel_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wire_module, "MAX_MESSAGE", 1024)
    ctx = kernel_context()
    pub = zmq.Context.shadow(ctx.underlying).socket(zmq.PUB)
    pub.bind(f"ipc://{tmp_path}/iopub")
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    events = sub.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    sub.connect(f"ipc://{tmp_path}/iopub")
    got: list[list[bytes]] = []
    wire = Wire({Channel.IOPUB: sub}, lambda channel, frames: got.append(frames))
    try:
        async with asyncio.timeout(30):
            while not got:  # subscribed once a small one arrives
                pub.send_multipart([b"small", bytes(1000)])
                await asyncio.sleep(0.02)
            pub.send_multipart([b"big", bytes(2048)])
            assert (await events.recv_multipart())[1].endswith(b"/iopub")  # libzmq dropped the channel
        assert all(frames[0] == b"small" for frames in got)
    finally:
        wire.close()
        events.close(linger=0)
        pub.close(linger=0)
        ctx.destroy(linger=0)


@pytest.mark.parametrize("scheme", ["hmac-sha256", "hmac-sha512", "hmac-md5"])
def test_the_signer_signs_as_jupyter_clients_session(scheme: str) -> None:
    session = Session(key=b"a-key-of-the-kernel", signature_scheme=scheme)
    parts = [b'{"msg_id":"1","msg_type":"status"}', b"{}", b"{}", b'{"execution_state":"idle"}']
    sign = signer(session.key, session.digest_mod)
    assert sign is not None
    assert sign(parts) == session.sign(parts)
    assert sign(parts) == sign(parts)  # the keyed HMAC is copied, never fed twice
    assert sign([*parts[:3], b"{}"]) != session.sign(parts)
    assert signer(b"", session.digest_mod) is None


def test_a_kernel_message_is_taken_only_with_its_keys_signature() -> None:
    session = Session(key=b"a-key-of-the-kernel")
    kernel = Kernel(SimpleNamespace(session=session), "python3")  # type: ignore[arg-type]
    kernel._sign = signer(session.key, session.digest_mod)
    frames = session.serialize(session.msg("status", content={"execution_state": "idle"}))
    msg = kernel._decode(Channel.IOPUB, frames)
    assert msg is not None and msg.content == {"execution_state": "idle"}
    forged = Session(key=b"another-key").serialize(session.msg("status", content={"execution_state": "idle"}))
    assert kernel._decode(Channel.IOPUB, forged) is None
    sent: list[list[Any]] = []
    kernel._wire = SimpleNamespace(send=lambda channel, parts: sent.append(parts))  # type: ignore[assignment]
    kernel.send(msg)
    assert session.deserialize(sent[0][sent[0].index(DELIM) + 1 :])["content"] == msg.content  # checks the HMAC


@pytest.mark.parametrize("part", [0, 1, 3])
@pytest.mark.parametrize("value", [b"[]", b'"text"', b"null", b"7"])
def test_a_kernel_message_whose_header_parent_or_content_is_not_an_object_is_dropped(
    part: int, value: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    session = Session(key=b"a-key-of-the-kernel")
    kernel = Kernel(SimpleNamespace(session=session), "python3")  # type: ignore[arg-type]
    kernel._sign = signer(session.key, session.digest_mod)
    frames = session.serialize(session.msg("status", content={"execution_state": "idle"}))
    at = frames.index(DELIM) + 2  # past the delimiter and the signature
    frames[at + part] = value
    frames[at - 1] = session.sign(frames[at : at + 4])  # signed as the kernel would: only the shape is wrong
    seen: list[Any] = []
    kernel.listener = SimpleNamespace(on_kernel_message=seen.append)  # type: ignore[assignment]
    with caplog.at_level("WARNING"):
        kernel._receive(Channel.IOPUB, frames)
    assert seen == [] and "not an object" in caplog.text
    frames[at + part] = b"{}"
    frames[at - 1] = session.sign(frames[at : at + 4])
    kernel._receive(Channel.IOPUB, frames)  # the listener still takes the next one
    assert len(seen) == 1
