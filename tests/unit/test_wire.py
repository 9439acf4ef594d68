"""A kernel's channels spoken as ZMTP by asyncio (``kernels.wire``), against real libzmq peers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import zmq
from jupyter_client.session import DELIM, Session

from kernel_gateway.kernels import wire
from kernel_gateway.kernels.kernel import Kernel
from kernel_gateway.kernels.wire import GREETING, Endpoint, Link, Wire, encode, signer
from kernel_gateway.types import Channel


async def wait_for(condition: Any, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - the condition is a peer socket's state, no event to wait on
            await asyncio.sleep(0.01)


async def test_every_message_arrives_in_order_and_sends_wait_for_the_kernel(tmp_path: Path) -> None:
    ctx = zmq.Context()
    got: list[list[bytes]] = []
    # The wire starts before the kernel has bound its socket: it retries, and what it sends meanwhile waits.
    wire = Wire({Channel.SHELL: Endpoint.of("ipc", f"{tmp_path}/k", 1)}, b"svc", lambda c, frames: got.append(frames))
    kernel_side = ctx.socket(zmq.ROUTER)
    try:
        wire.send(Channel.SHELL, [b"hello"])
        kernel_side.bind(f"ipc://{tmp_path}/k-1")
        await wait_for(lambda: kernel_side.poll(0))
        ident, body = kernel_side.recv_multipart()
        assert (ident, body) == (b"svc", b"hello")  # the identity the stdin channel shares
        big = bytes(range(256)) * 4096  # 1 MiB: long frames, read in many pieces
        wire.send(Channel.SHELL, [b"<IDS|MSG>", b"", memoryview(b"buffer"), big, b"last"])  # one message
        await wait_for(lambda: kernel_side.poll(0))
        assert kernel_side.recv_multipart() == [b"svc", b"<IDS|MSG>", b"", b"buffer", big, b"last"]
        for n in range(300):
            kernel_side.send_multipart([b"svc", str(n).encode(), b"x" * n])
        kernel_side.send_multipart([b"svc", big, b""])
        await wait_for(lambda: len(got) == 301)
        assert [frames for frames in got[:300]] == [[str(n).encode(), b"x" * n] for n in range(300)]
        assert got[300] == [big, b""]
    finally:
        wire.close()
        kernel_side.close(linger=0)
        ctx.term()


async def test_iopub_subscribes_to_everything_and_a_closed_wire_stops_reading(tmp_path: Path) -> None:
    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)  # as ipykernel's iopub
    pub.bind(f"ipc://{tmp_path}/k-2")
    got: list[list[bytes]] = []
    wire = Wire({Channel.IOPUB: Endpoint.of("ipc", f"{tmp_path}/k", 2)}, b"svc", lambda c, frames: got.append(frames))
    try:
        await wait_for(lambda: pub.poll(0))
        assert pub.recv_multipart() == [b"\x01"]  # subscribed to every topic
        pub.send_multipart([b"kernel.status", b"<IDS|MSG>", b"{}"])
        await wait_for(lambda: len(got) == 1)
        assert got == [[b"kernel.status", b"<IDS|MSG>", b"{}"]]
        wire.close()
        assert not wire.connected()
        await wait_for(lambda: pub.poll(0))
        assert pub.recv_multipart() == [b"\x00"]  # libzmq's unsubscribe: the connection is gone
    finally:
        wire.close()
        pub.close(linger=0)
        ctx.term()


async def test_a_kernel_on_tcp_is_reached_the_same_way() -> None:
    ctx = zmq.Context()
    kernel_side = ctx.socket(zmq.ROUTER)
    port = kernel_side.bind_to_random_port("tcp://127.0.0.1")
    got: list[list[bytes]] = []
    wire = Wire({Channel.CONTROL: Endpoint.of("tcp", "127.0.0.1", port)}, b"svc", lambda c, f: got.append(f))
    try:
        wire.send(Channel.CONTROL, [b"ping"])
        await wait_for(lambda: kernel_side.poll(0))
        assert kernel_side.recv_multipart() == [b"svc", b"ping"]
        kernel_side.send_multipart([b"svc", b"pong"])
        await wait_for(lambda: got == [[b"pong"]])
    finally:
        wire.close()
        kernel_side.close(linger=0)
        ctx.term()


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0


def _peer_hello(mechanism: bytes = b"NULL") -> bytes:
    ready = b"\x05READY" + bytes((11,)) + b"Socket-Type" + (6).to_bytes(4, "big") + b"ROUTER"
    return GREETING[:12] + mechanism.ljust(20, b"\x00") + GREETING[32:] + bytes((4, len(ready))) + ready


@pytest.mark.parametrize("piece", [1, 7, 64, 100_000])
def test_frames_are_cut_the_same_however_the_bytes_arrive(piece: int) -> None:
    got: list[list[bytes]] = []
    link = Link(Channel.SHELL, b"DEALER", b"svc", lambda c, frames: got.append(frames))
    transport = _Transport()
    link.connection_made(transport)  # type: ignore[arg-type]
    link.send(encode([b"early"]))  # before the peer's READY: held
    assert transport.written == [link._hello]
    messages = [[b"a"], [b"", b"b" * 300, b"c"], [bytes(70_000)], [b"d", b""]]
    stream = _peer_hello() + b"".join(encode(m) for m in messages)
    for i in range(0, len(stream), piece):
        link.data_received(stream[i : i + piece])
    assert got == messages
    assert link.open and transport.written[1:] == [encode([b"early"])]


@pytest.mark.parametrize("parts", [[b"x" * 40], [b"x" * 20, b"y" * 20], [b"a"] * 40])
def test_a_kernel_message_bigger_than_the_limit_closes_its_channel_before_it_is_buffered(
    parts: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wire, "MAX_MESSAGE", 32)
    got: list[list[bytes]] = []
    link = Link(Channel.IOPUB, b"SUB", b"", lambda c, frames: got.append(frames))
    transport = _Transport()
    link.connection_made(transport)  # type: ignore[arg-type]
    link.data_received(_peer_hello() + encode([b"x" * 32]) + encode([b"a"] * 32))  # at the limit: taken
    assert len(got) == 2 and not link.closed
    message = encode(parts)
    link.data_received(message[: len(message) - 1])  # its last byte never comes: refused on what it announces
    assert link.closed and transport.aborted and len(got) == 2
    assert link._frames == [] and link._chunks == []  # nothing of it kept


def test_a_peer_without_the_null_mechanism_is_left() -> None:
    link = Link(Channel.SHELL, b"DEALER", b"svc", lambda c, frames: None)
    transport = _Transport()
    link.connection_made(transport)  # type: ignore[arg-type]
    link.data_received(_peer_hello(b"CURVE"))
    assert transport.aborted and link.closed and not link.open


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
