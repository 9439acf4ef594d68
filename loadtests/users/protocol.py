"""Jupyter messaging and Server-Sent Events, as plain data: shared by the locust users and the compare probes."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

Msg = dict[str, Any]


def execute_request(code: str, session: str = "skg-loadtest") -> Msg:
    return {
        "header": {
            "msg_id": uuid.uuid4().hex,
            "msg_type": "execute_request",
            "session": session,
            "username": "loadtest",
            "date": "2026-01-01T00:00:00.000000Z",
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "content": {
            "code": code,
            "silent": False,
            "store_history": True,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": True,
        },
        "channel": "shell",
    }


@dataclass
class CellOutcome:
    """What came back for one execute_request, folded as the messages arrive."""

    msg_id: str
    status: str | None = None
    idle: bool = False
    stdout: str = ""
    outputs: int = 0
    error: str | None = None
    first_output: bool = False
    extra: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.status is not None and self.idle

    def feed(self, msg: Msg) -> bool:
        """Take one message off the socket; True when it was the first output of this cell."""
        if msg.get("parent_header", {}).get("msg_id") != self.msg_id:
            return False
        msg_type = msg.get("header", {}).get("msg_type")
        content = msg.get("content", {})
        if msg.get("channel") == "shell" and msg_type == "execute_reply":
            self.status = content.get("status")
            if self.status == "error":
                self.error = f"{content.get('ename')}: {content.get('evalue')}"
            return False
        if msg_type == "status":
            self.idle = self.idle or content.get("execution_state") == "idle"
            return False
        if msg_type in ("stream", "execute_result", "display_data", "error"):
            if msg_type == "stream" and content.get("name") == "stdout":
                self.stdout += content.get("text", "")
            self.outputs += 1
            first = not self.first_output
            self.first_output = True
            return first
        return False


def decode(frame: str | bytes) -> Msg:
    msg: Msg = json.loads(frame)
    return msg


@dataclass(frozen=True)
class SseEvent:
    event: str
    data: Msg


def parse_sse(lines: Iterable[str]) -> Iterator[SseEvent]:
    """Server-Sent Events from decoded lines (``event:``/``data:`` fields, a blank line ends an event)."""
    event, data = "message", list[str]()
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                yield SseEvent(event, json.loads("\n".join(data)))
            event, data = "message", list[str]()
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())
    if data:
        yield SseEvent(event, json.loads("\n".join(data)))
