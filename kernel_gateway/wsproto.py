"""The two wire formats of the Jupyter kernel WebSocket.

- Default: one JSON text frame per message with a top-level ``channel``; a message with binary buffers goes
  as jupyter_server's legacy binary frame (big-endian u32 count and offsets, the JSON, then the buffers).
- ``v1.kernel.websocket.jupyter.org``, when the client offers it: a binary frame of little-endian u64 offsets,
  then the channel name, the four JSON parts and the buffers, so that parts pass through without re-encoding.
"""

from __future__ import annotations

import struct
from typing import Any

import orjson

from .types import Channel, KernelMessage

V1_SUBPROTOCOL = "v1.kernel.websocket.jupyter.org"

_FROM_CLIENT = frozenset({Channel.SHELL, Channel.STDIN, Channel.CONTROL})
_EXECUTE_FIELDS: dict[str, type] = {
    "silent": bool, "store_history": bool, "allow_stdin": bool, "stop_on_error": bool, "user_expressions": dict
}  # fmt: skip
_MAX_PARTS = 1024
_CHANNELS = {c.value: c for c in Channel}  # a dict lookup, not the enum's call
_CHANNEL_JSON = {c: f'"{c.value}"}}'.encode() for c in Channel}  # a frame's tail, not the enum's value each time


class ProtocolError(ValueError):
    """A frame that is not a Jupyter message."""


def _message(
    channel: Any, header: Any, parent: Any, metadata: Any, content: Any, buffers: list[bytes]
) -> KernelMessage:
    ch = _CHANNELS.get(channel) if isinstance(channel, str) else None
    if ch is None:
        raise ProtocolError(f"unknown channel {channel!r}")
    if ch not in _FROM_CLIENT:
        raise ProtocolError(f"clients may not send on {ch.value}")
    if not isinstance(header, dict) or not header.get("msg_id") or not header.get("msg_type"):
        raise ProtocolError("header must be an object with msg_id and msg_type")
    parent = parent if isinstance(parent, dict) else {}
    metadata = metadata if isinstance(metadata, dict) else {}
    if not isinstance(content, dict):
        raise ProtocolError("content must be an object")
    if header.get("msg_type") == "execute_request":
        _check_execute(content)
    return KernelMessage(ch, header, parent, metadata, content, buffers)


def _check_execute(content: dict[str, Any]) -> None:
    # ipykernel neither replies to nor goes idle after an execute_request it cannot read, and the session lets
    # the next cell in only after this one's reply: such a request would hold every later cell for ever.
    if not isinstance(content.get("code"), str):
        raise ProtocolError("an execute_request needs its code as a string")
    for name, kind in _EXECUTE_FIELDS.items():
        if name in content and not isinstance(content[name], kind):
            raise ProtocolError(f"an execute_request's {name} must be a {kind.__name__}")


def decode_json(text: str | bytes) -> KernelMessage:
    try:
        msg = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise ProtocolError("a message must be a JSON object")
    return _message(
        msg.get("channel"), msg.get("header"), msg.get("parent_header"), msg.get("metadata"), msg.get("content"), []
    )


def decode_legacy_binary(data: bytes) -> KernelMessage:
    try:
        (n,) = struct.unpack_from("!I", data, 0)
        if not 1 <= n <= _MAX_PARTS:
            raise ProtocolError("bad part count")
        offsets = [*list(struct.unpack_from(f"!{n}I", data, 4)), len(data)]
        parts = [data[offsets[i] : offsets[i + 1]] for i in range(n)]
    except struct.error as exc:
        raise ProtocolError(f"truncated binary message: {exc}") from None
    msg = decode_json(parts[0])
    msg.buffers = parts[1:]
    return msg


def decode_v1(data: bytes) -> KernelMessage:
    try:
        (n,) = struct.unpack_from("<Q", data, 0)
        if not 6 <= n <= _MAX_PARTS:
            raise ProtocolError("bad offset count")
        offsets = struct.unpack_from(f"<{n}Q", data, 8)
    except struct.error as exc:
        raise ProtocolError(f"truncated v1 message: {exc}") from None
    if list(offsets) != sorted(offsets) or offsets[-1] > len(data):
        raise ProtocolError("offsets out of order or past the end")
    parts = [data[offsets[i] : offsets[i + 1]] for i in range(n - 1)]
    try:
        channel = parts[0].decode()
        header, parent, metadata, content = (orjson.loads(p) for p in parts[1:5])
    except (UnicodeDecodeError, orjson.JSONDecodeError) as exc:
        raise ProtocolError(f"undecodable v1 message: {exc}") from None
    return _message(channel, header, parent, metadata, content, [bytes(b) for b in parts[5:]])


def _parts(msg: KernelMessage) -> list[bytes]:
    if msg.raw is not None:
        return msg.raw
    return [orjson.dumps(p) for p in (msg.header, msg.parent_header, msg.metadata, msg.content)]


def encode_v1(msg: KernelMessage) -> bytes:
    parts = [msg.channel.value.encode(), *_parts(msg), *msg.buffers]
    offsets = [8 * (len(parts) + 2)]
    for part in parts:
        offsets.append(offsets[-1] + len(part))
    return b"".join([struct.pack(f"<{len(offsets) + 1}Q", len(offsets), *offsets), *parts])


def encode_json(msg: KernelMessage) -> str | bytes:
    """A text frame (str), or a legacy binary frame (bytes) when the message carries buffers."""
    text, payload = encode_json_payload(msg)
    return payload.decode() if text else payload


def encode_json_payload(msg: KernelMessage) -> tuple[bool, bytes]:
    """``encode_json``'s frame as (is it text?, its bytes): a text frame's UTF-8 is sent as it is."""
    header, parent, metadata, content = _parts(msg)
    body = b"".join(
        (
            b'{"header":', header,
            b',"msg_id":', orjson.dumps(msg.msg_id),
            b',"msg_type":', orjson.dumps(msg.msg_type),
            b',"parent_header":', parent,
            b',"metadata":', metadata,
            b',"content":', content,
            b',"buffers":[],"channel":', _CHANNEL_JSON[msg.channel],
        )
    )  # fmt: skip
    if not msg.buffers:
        return True, body
    chunks = [body, *msg.buffers]
    offsets = [4 * (len(chunks) + 1)]
    for chunk in chunks[:-1]:
        offsets.append(offsets[-1] + len(chunk))
    return False, b"".join([struct.pack(f"!{len(chunks) + 1}I", len(chunks), *offsets), *chunks])
