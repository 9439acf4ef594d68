"""A minimal Jupyter WebSocket frontend for tests: builds messages, runs cells, gathers replies."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection

Msg = dict[str, Any]


def message(msg_type: str, content: Msg, channel: str = "shell", parent: Msg | None = None) -> Msg:
    return {
        "header": {
            "msg_id": uuid.uuid4().hex,
            "msg_type": msg_type,
            "session": "test-frontend",
            "username": "test",
            "date": "2026-01-01T00:00:00.000000Z",
            "version": "5.3",
        },
        "parent_header": parent or {},
        "metadata": {},
        "content": content,
        "channel": channel,
    }


def execute_request(code: str, allow_stdin: bool = False) -> Msg:
    return message(
        "execute_request",
        {
            "code": code,
            "silent": False,
            "store_history": True,
            "user_expressions": {},
            "allow_stdin": allow_stdin,
            "stop_on_error": True,
        },
    )


@dataclass
class CellResult:
    reply: Msg
    iopub: list[Msg] = field(default_factory=list)
    stdin: list[Msg] = field(default_factory=list)

    def of_type(self, msg_type: str) -> list[Msg]:
        return [m for m in self.iopub if m["header"]["msg_type"] == msg_type]

    @property
    def stdout(self) -> str:
        return "".join(m["content"]["text"] for m in self.of_type("stream") if m["content"]["name"] == "stdout")


async def recv_json(ws: ClientConnection, timeout: float = 30.0) -> Msg:
    frame = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(frame, str), "expected a JSON text frame"
    msg: Msg = json.loads(frame)
    return msg


async def run_cell(
    ws: ClientConnection,
    code: str,
    timeout: float = 30.0,
    stdin_answer: str | None = None,
    started: asyncio.Event | None = None,
) -> CellResult:
    """Send one execute_request and collect until its execute_reply and its iopub idle have arrived.

    ``started`` is set at the cell's first stream output: a test that must act while the cell runs prints
    first and waits on it, rather than sleeping and hoping the cell got there.
    """
    request = execute_request(code, allow_stdin=stdin_answer is not None)
    msg_id = request["header"]["msg_id"]
    await ws.send(json.dumps(request))
    reply: Msg | None = None
    idle = False
    result_iopub: list[Msg] = []
    result_stdin: list[Msg] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while reply is None or not idle:
        msg = await recv_json(ws, max(deadline - loop.time(), 0.01))
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        channel = msg["channel"]
        if channel == "shell":
            reply = msg
        elif channel == "stdin":
            result_stdin.append(msg)
            answer = message("input_reply", {"value": stdin_answer}, channel="stdin", parent=msg["header"])
            await ws.send(json.dumps(answer))
        elif channel == "iopub":
            result_iopub.append(msg)
            if started is not None and msg["header"]["msg_type"] == "stream":
                started.set()
            if msg["header"]["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
    return CellResult(reply, result_iopub, result_stdin)
