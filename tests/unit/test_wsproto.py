"""The kernel WebSocket wire codecs, in-process: every format round-trips, every malformed frame is refused."""

from __future__ import annotations

import struct

import orjson
import pytest

from kernel_gateway.types import Channel, KernelMessage
from kernel_gateway.wsproto import ProtocolError, decode_json, decode_legacy_binary, decode_v1, encode_json, encode_v1


def message(channel: Channel = Channel.SHELL, buffers: list[bytes] | None = None) -> KernelMessage:
    header = {"msg_id": "m1", "msg_type": "execute_request", "session": "s", "username": "u", "version": "5.3"}
    return KernelMessage(channel, header, {"msg_id": "p0"}, {"k": 1}, {"code": "1+1"}, buffers or [])


def test_json_text_frame_round_trips() -> None:
    frame = encode_json(message())
    assert isinstance(frame, str)
    doc = orjson.loads(frame)
    assert doc["channel"] == "shell" and doc["msg_id"] == "m1" and doc["msg_type"] == "execute_request"
    back = decode_json(frame)
    assert (back.channel, back.header, back.parent_header, back.metadata, back.content) == (
        Channel.SHELL, message().header, {"msg_id": "p0"}, {"k": 1}, {"code": "1+1"},
    )  # fmt: skip


def test_message_with_buffers_goes_as_legacy_binary_and_round_trips() -> None:
    frame = encode_json(message(buffers=[b"\x00\x01", b"xyz"]))
    assert isinstance(frame, bytes)
    back = decode_legacy_binary(frame)
    assert back.buffers == [b"\x00\x01", b"xyz"]
    assert back.content == {"code": "1+1"}


def test_v1_frame_round_trips_with_buffers() -> None:
    back = decode_v1(encode_v1(message(Channel.CONTROL, [b"abc"])))
    assert back.channel is Channel.CONTROL
    assert back.header["msg_id"] == "m1" and back.buffers == [b"abc"]


def test_raw_parts_pass_through_without_reencoding() -> None:
    msg = message()
    msg.raw = [b'{"msg_id":"r","msg_type":"status"}', b"{}", b"{}", b'{"execution_state":"idle"}']
    msg.channel = Channel.IOPUB
    frame = encode_v1(msg)
    assert b'{"execution_state":"idle"}' in frame


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "JSON object"),
        ('{"channel": "nope", "header": {"msg_id": "a", "msg_type": "b"}, "content": {}}', "unknown channel"),
        ('{"channel": "iopub", "header": {"msg_id": "a", "msg_type": "b"}, "content": {}}', "may not send"),
        ('{"channel": "shell", "header": {"msg_type": "b"}, "content": {}}', "msg_id"),
        ('{"channel": "shell", "header": {"msg_id": "a", "msg_type": "b"}, "content": []}', "content"),
    ],
)
def test_malformed_json_frames_are_refused_with_a_reason(frame: str, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        decode_json(frame)


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\x00\x00\x00",
        struct.pack("!I", 0),
        struct.pack("!I", 5000),
        struct.pack("!II", 2, 12),  # claims two parts, has one offset
    ],
)
def test_truncated_legacy_frames_are_refused(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_legacy_binary(frame)


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        struct.pack("<Q", 3),
        struct.pack("<Q", 6) + struct.pack("<6Q", 56, 50, 60, 70, 80, 90),  # out of order
        struct.pack("<Q", 6) + struct.pack("<6Q", 56, 61, 63, 65, 67, 10_000),  # past the end
        struct.pack("<Q", 6) + struct.pack("<6Q", 56, 61, 62, 63, 64, 65) + b"shellx{}{}{",
    ],
)
def test_malformed_v1_frames_are_refused(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_v1(frame)
