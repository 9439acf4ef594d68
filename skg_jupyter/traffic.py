"""What the idle-closing connection knows about a kernel's traffic: pure functions and small records, no I/O.

A kernel WebSocket carries Jupyter messages in jupyter_server's legacy wire format (the gateway connection
always negotiates it): a JSON text frame with a ``channel`` key, or a binary frame (a 32-bit part count, the
part offsets, the JSON message, then its buffers).
"""

from __future__ import annotations

import json
import struct
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

Msg = dict[str, Any]

# The kernel states after which nothing we asked is still being worked on.
_RESET_STATES = frozenset({"starting", "restarting", "dead"})


def parse(frame: str | bytes) -> Msg | None:
    """The message in a legacy-format frame (buffers left out), or None when it is not one."""
    try:
        if isinstance(frame, bytes):
            (parts,) = struct.unpack("!I", frame[:4])
            offsets = struct.unpack(f"!{parts}I", frame[4 : 4 * (parts + 1)])
            end = offsets[1] if parts > 1 else len(frame)
            msg = json.loads(frame[offsets[0] : end])
        else:
            msg = json.loads(frame)
    except (ValueError, struct.error, IndexError):
        return None
    if not isinstance(msg, dict) or not isinstance(msg.get("header"), dict):
        return None
    return msg


def msg_type(msg: Msg) -> str:
    return str(msg["header"].get("msg_type", ""))


def msg_id(msg: Msg) -> str:
    return str(msg["header"].get("msg_id", ""))


def parent_id(msg: Msg) -> str:
    parent = msg.get("parent_header")
    return str(parent.get("msg_id", "")) if isinstance(parent, dict) else ""


def execution_state(msg: Msg) -> str | None:
    """The kernel's state if this is an iopub status message."""
    if msg.get("channel") != "iopub" or msg_type(msg) != "status":
        return None
    content = msg.get("content")
    state = content.get("execution_state") if isinstance(content, dict) else None
    return str(state) if state else None


@dataclass
class Traffic:
    """Cells this connection asked the kernel to run and that have not ended yet.

    Only ``execute_request`` counts: everything else (completion, inspection, kernel_info, comm messages) is
    answered in milliseconds, and a socket closed under one costs at most its reply, which the gateway replays.
    A cell ends with its ``execute_reply`` or with the kernel's idle status for it; a kernel that restarts or
    dies ends them all.
    """

    running: set[str] = field(default_factory=set)

    def to_kernel(self, msg: Msg | None) -> None:
        if msg is not None and msg.get("channel") == "shell" and msg_type(msg) == "execute_request":
            self.running.add(msg_id(msg))

    def from_kernel(self, msg: Msg | None) -> None:
        if msg is None:
            return
        state = execution_state(msg)
        if state in _RESET_STATES:
            self.running.clear()
        elif state == "idle" or (msg.get("channel") == "shell" and msg_type(msg) == "execute_reply"):
            self.running.discard(parent_id(msg))

    @property
    def busy(self) -> bool:
        return bool(self.running)


@dataclass
class KernelLink:
    """What every connection of one jupyter_server to one kernel shares (kept by the kernel manager, so it
    outlives a browser's socket): the last kernel_info_reply, the last state the kernel reported, and how many
    connections have a gateway socket open or opening."""

    info_reply: Msg | None = None
    execution_state: str = "unknown"
    upstream: int = 0

    def observe(self, msg: Msg) -> None:
        state = execution_state(msg)
        if state is not None:
            self.execution_state = state
        elif msg.get("channel") == "shell" and msg_type(msg) == "kernel_info_reply":
            content = msg.get("content")
            if isinstance(content, dict) and content.get("status", "ok") == "ok":
                self.info_reply = msg

    @property
    def can_answer_kernel_info(self) -> bool:
        """A kernel_info_request can be answered here without waking the gateway: we have the kernel's own
        reply, the kernel was idle when last heard of, and no socket of ours is talking to it right now."""
        return self.info_reply is not None and self.execution_state == "idle" and self.upstream == 0


class RecentIds:
    """The last ``size`` message ids forwarded to the browser: a gateway that replays its buffer after a
    reconnect may send again what already went through, and the browser must see each message once."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def seen(self, mid: str) -> bool:
        """True if ``mid`` went through before; remembers it otherwise."""
        if not mid:
            return False
        if mid in self._ids:
            return True
        self._ids[mid] = None
        if len(self._ids) > self.size:
            self._ids.popitem(last=False)
        return False


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def local_kernel_info(request: Msg, cached_reply: Msg) -> list[Msg]:
    """The messages a kernel sends for a kernel_info_request (busy, the reply, idle), built from the kernel's
    own last reply: same content and kernel session, new ids, parented to this request."""

    def header(kind: str) -> Msg:
        base = cached_reply["header"]
        return {
            "msg_id": uuid.uuid4().hex,
            "msg_type": kind,
            "session": base.get("session", ""),
            "username": base.get("username", ""),
            "date": _now(),
            "version": base.get("version", "5.3"),
        }

    parent = request["header"]

    def status(state: str) -> Msg:
        content = {"execution_state": state}
        return {"header": header("status"), "parent_header": parent, "metadata": {}, "content": content,
                "channel": "iopub", "buffers": []}  # fmt: skip

    reply: Msg = {
        "header": header("kernel_info_reply"),
        "parent_header": parent,
        "metadata": cached_reply.get("metadata") or {},
        "content": cached_reply.get("content") or {},
        "channel": "shell",
        "buffers": [],
    }
    return [status("busy"), reply, status("idle")]
