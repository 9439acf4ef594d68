"""A kernel's sockets read straight from their file descriptors (``kernels.wire``), against real ZMQ peers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import zmq
import zmq.asyncio
from jupyter_client.session import DELIM, Session

from kernel_gateway.kernels.kernel import Kernel
from kernel_gateway.kernels.wire import Wire, signer
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
