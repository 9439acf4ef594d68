"""Bad input, generated: schemathesis over the service's own OpenAPI document (no 5xx, every answer as
documented), and hypothesis over the kernel WebSocket's wire formats (every frame is a message or a clear
ProtocolError; on a live socket, a clear close code or nothing; the replica stays up)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from websockets.sync.client import connect

from kernel_gateway.app import create_app
from kernel_gateway.limits import WS_MAX_MESSAGE
from kernel_gateway.settings import Settings
from kernel_gateway.types import Channel, KernelMessage
from kernel_gateway.wsproto import ProtocolError, decode_json, decode_legacy_binary, decode_v1, encode_json, encode_v1
from tests.service import Service, running_service

TOKEN, WS_TOKEN = "fuzz-token", "ws-token"
AUTH, WS_AUTH = {"Authorization": f"token {TOKEN}"}, {"Authorization": f"token {WS_TOKEN}"}


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("fuzz")
    tenants = tmp / "tenants.json"
    # A tenant with few sessions and short cells: generated requests create sessions and run generated code.
    tenants.write_text(json.dumps({
        "fuzz": {"token_sha256": hashlib.sha256(TOKEN.encode()).hexdigest(), "max_sessions": 3,
                 "kernel_memory": "2GiB"},
        "sockets": hashlib.sha256(WS_TOKEN.encode()).hexdigest(),
    }))  # fmt: skip
    args = ["--pool-size", "1", "--tenants-file", str(tenants), "--execution-timeout", "3",
            "--max-execution-timeout", "3", "--interrupt-grace", "2", "--max-body-size", "65536"]  # fmt: skip
    with running_service(tmp, args) as svc:
        yield svc


# The service's own OpenAPI document, as any replica serves it at /openapi.json (no replica needs to run).
SPEC = create_app(Settings(_env_file=None)).openapi()  # type: ignore[call-arg]
# Every operation with valid input; those with a body with invalid bodies too (a string path parameter
# has no invalid value to generate).
OPERATIONS = [
    (path, method.upper(), mode)
    for path, item in SPEC["paths"].items()
    for method, operation in item.items()
    for mode in GenerationMode
    if mode is GenerationMode.POSITIVE or "requestBody" in operation
]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.mark.parametrize(("path", "method", "mode"), OPERATIONS)
def test_api_answers_every_generated_request_as_documented(
    fuzzed: Service, path: str, method: str, mode: GenerationMode
) -> None:
    assert httpx.get(f"{fuzzed.url}/openapi.json").json() == SPEC
    operation = schemathesis.openapi.from_dict(SPEC)[path][method]

    @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None)  # fmt: skip
    @given(case=operation.as_strategy(mode))
    def answers_as_documented(case: Any) -> None:
        case.call_and_validate(base_url=fuzzed.url, headers=AUTH, checks=CHECKS, timeout=60)

    answers_as_documented()


# -- the WebSocket codecs --------------------------------------------------------------------------------

json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
channels = st.sampled_from(["shell", "control", "stdin", "iopub", "hb", "nope", "", "SHELL"]) | st.text(max_size=8)
headers = st.fixed_dictionaries({"msg_id": st.text(min_size=1, max_size=8), "msg_type": st.text(min_size=1,
                                 max_size=16)}) | json_value  # fmt: skip
messages = st.fixed_dictionaries(
    {"channel": channels | json_value, "header": headers, "parent_header": json_value, "content": json_value}
)


def _decoded_or_refused(decode: Any, frame: Any) -> KernelMessage | None:
    try:
        msg: KernelMessage = decode(frame)
    except ProtocolError:
        return None  # the clear error: the socket drops this frame and goes on
    assert msg.channel in (Channel.SHELL, Channel.CONTROL, Channel.STDIN)
    assert isinstance(msg.header, dict) and msg.header.get("msg_id") and isinstance(msg.content, dict)
    return msg


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=256) | st.text(max_size=256) | messages.map(json.dumps))
def test_json_frames_are_messages_or_protocol_errors(frame: str | bytes) -> None:
    _decoded_or_refused(decode_json, frame)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512), st.integers(0, 2000), st.lists(st.integers(0, 2**32 - 1), max_size=6))
def test_legacy_binary_frames_are_messages_or_protocol_errors(tail: bytes, count: int, offsets: list[int]) -> None:
    for frame in (tail, struct.pack("!I", count) + tail, struct.pack(f"!I{len(offsets)}I", count, *offsets) + tail):
        _decoded_or_refused(decode_legacy_binary, frame)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512), st.integers(0, 2**64 - 1), st.lists(st.integers(0, 2**64 - 1), max_size=8))
def test_v1_frames_are_messages_or_protocol_errors(tail: bytes, count: int, offsets: list[int]) -> None:
    for frame in (tail, struct.pack("<Q", count) + tail, struct.pack(f"<Q{len(offsets)}Q", count, *offsets) + tail):
        _decoded_or_refused(decode_v1, frame)


@settings(max_examples=200, deadline=None)
@given(messages, st.lists(st.binary(max_size=16), max_size=3), st.integers(0, 400))
def test_valid_frames_round_trip_and_every_truncation_is_refused(raw: dict[str, Any], buffers: list[bytes],
                                                                 cut: int) -> None:  # fmt: skip
    try:
        msg = decode_json(json.dumps(raw))
    except ProtocolError:
        return
    msg.buffers = buffers
    v1 = encode_v1(msg)
    again = decode_v1(v1)
    assert (again.channel, again.header, again.content, again.buffers) == (msg.channel, msg.header, msg.content,
                                                                         buffers)  # fmt: skip
    legacy = encode_json(msg)
    if isinstance(legacy, bytes):
        assert decode_legacy_binary(legacy).buffers == buffers
    if cut < len(v1):
        truncated = _decoded_or_refused(decode_v1, v1[:cut])
        assert truncated is None or truncated.content == msg.content  # a cut inside the buffers only


# -- on a live socket ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kernel(fuzzed: Service) -> str:
    kid: str = httpx.post(f"{fuzzed.url}/api/kernels", json={}, headers=WS_AUTH, timeout=120).json()["id"]
    return kid


def _still_serves(svc: Service, kernel: str) -> None:
    # A fresh msg_id each time: the kernel drops a message whose signature it has seen (replay protection).
    msg_id = uuid.uuid4().hex
    with connect(f"{svc.ws_url}/api/kernels/{kernel}/channels", additional_headers=WS_AUTH, open_timeout=60) as ws:
        request = {"channel": "shell", "header": {"msg_id": msg_id, "msg_type": "kernel_info_request"},
                   "parent_header": {}, "metadata": {}, "content": {}}  # fmt: skip
        ws.send(json.dumps(request))
        for _ in range(50):
            reply = json.loads(ws.recv(timeout=60))
            if reply["parent_header"].get("msg_id") == msg_id and reply["msg_type"] == "kernel_info_reply":
                return
    raise AssertionError("no kernel_info_reply after bad frames")


@pytest.mark.parametrize(
    "content", [{}, {"code": 5}, {"code": "1", "silent": "yes"}, {"code": "1", "user_expressions": 3}]
)
def test_an_unreadable_execute_request_holds_no_later_cell(fuzzed: Service, kernel: str, content: Any) -> None:
    # ipykernel never answers these; were they let into the kernel, every later cell would wait for ever.
    with connect(f"{fuzzed.ws_url}/api/kernels/{kernel}/channels", additional_headers=WS_AUTH, open_timeout=60) as ws:
        ws.send(json.dumps({"channel": "shell", "header": {"msg_id": uuid.uuid4().hex, "msg_type": "execute_request"},
                            "parent_header": {}, "content": content}))  # fmt: skip
    reply = httpx.post(f"{fuzzed.url}/execute", json={"code": "1 + 1", "session": kernel}, headers=WS_AUTH, timeout=60)
    assert reply.json()["outputs"][0]["data"]["text/plain"] == "2"


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(frames=st.lists(st.binary(max_size=64) | st.text(max_size=64) | messages.map(json.dumps), max_size=4))
def test_a_live_socket_drops_bad_frames_and_goes_on(fuzzed: Service, kernel: str, frames: list[Any]) -> None:
    url = f"{fuzzed.ws_url}/api/kernels/{kernel}/channels"
    with connect(url, additional_headers=WS_AUTH, open_timeout=60) as ws:
        for frame in frames:
            if isinstance(frame, str) and '"control"' in frame and "shutdown" in frame:
                continue  # a well-formed shutdown_request is a real request, not bad input
            ws.send(frame)
    _still_serves(fuzzed, kernel)


def test_an_oversized_frame_closes_the_socket_with_1009(fuzzed: Service, kernel: str) -> None:
    # A raw socket: the frame's header announces more than the limit, and the replica answers before the
    # payload (which never comes), so the close frame is there to read.
    host, port = fuzzed.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            f"GET /api/kernels/{kernel}/channels HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: token {WS_TOKEN}\r\n\r\n".encode()
        )
        handshake = b""
        while b"\r\n\r\n" not in handshake:
            handshake += sock.recv(4096)
        assert handshake.startswith(b"HTTP/1.1 101"), handshake
        sock.sendall(struct.pack("!BBQ", 0x82, 0x80 | 127, WS_MAX_MESSAGE + 1) + os.urandom(4))
        frame = sock.recv(2 + 125)
    assert frame[0] == 0x88, frame  # a close frame
    assert struct.unpack("!H", frame[2:4])[0] == 1009
    _still_serves(fuzzed, kernel)
    assert httpx.get(f"{fuzzed.url}/healthz").status_code == 200


def test_files_of_the_kernelspec_resources_cannot_escape(fuzzed: Service, tmp_path: Path) -> None:
    for name in ("..%2f..%2fetc%2fpasswd", "kernel.json", "%2e%2e", "logo-64x64.png%00"):
        r = httpx.get(f"{fuzzed.url}/kernelspecs/python3/{name}", headers=WS_AUTH)
        assert r.status_code == 404, (name, r.status_code)
