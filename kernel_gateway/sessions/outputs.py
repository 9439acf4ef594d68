"""Turning a cell's iopub messages into nbformat v4 outputs, within a size budget."""

from __future__ import annotations

from typing import Any

import orjson

from ..types import JSONDict, KernelMessage

TRUNCATION_MARKER = "\n[output truncated: the cell wrote more than {limit} bytes]\n"

OUTPUT_TYPES = frozenset({"stream", "display_data", "execute_result", "error"})


def to_output(msg: KernelMessage) -> JSONDict | None:
    """The nbformat v4 output for an iopub message, or None when the message is not an output."""
    t = msg.msg_type
    c = msg.content
    if t == "stream":
        return {"output_type": "stream", "name": c.get("name", "stdout"), "text": c.get("text", "")}
    if t in ("display_data", "update_display_data"):
        return {"output_type": "display_data", "data": c.get("data", {}), "metadata": c.get("metadata", {})}
    if t == "execute_result":
        return {
            "output_type": "execute_result",
            "execution_count": c.get("execution_count"),
            "data": c.get("data", {}),
            "metadata": c.get("metadata", {}),
        }
    if t == "error":
        return {
            "output_type": "error",
            "ename": c.get("ename", ""),
            "evalue": c.get("evalue", ""),
            "traceback": c.get("traceback", []),
        }
    return None


def output_size(output: JSONDict) -> int:
    """Bytes an output counts against the cap: a stream's text, or the JSON of anything else."""
    if output["output_type"] == "stream":
        return len(str(output["text"]).encode())
    return len(orjson.dumps(output))


class OutputCollector:
    """The outputs of one cell as a notebook would hold them, never more than ``limit`` bytes.

    Handles what a notebook does: consecutive stream text of one name merges, ``clear_output`` (with
    ``wait``) empties the list, ``update_display_data`` replaces the output of the same ``display_id``.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.outputs: list[JSONDict] = []
        self.size = 0
        self.truncated = False
        self._clear_pending = False
        self._display_ids: dict[str, list[int]] = {}

    def add(self, msg: KernelMessage) -> JSONDict | None:
        """Record one iopub message; return the output to stream to a client, if any."""
        t = msg.msg_type
        if t == "clear_output":
            if msg.content.get("wait"):
                self._clear_pending = True
            else:
                self._clear()
            return {"output_type": "clear_output", "wait": bool(msg.content.get("wait"))}
        output = to_output(msg)
        if output is None:
            return None
        display_id = _display_id(msg)
        if t == "update_display_data":
            if self.truncated:
                return None
            shown = self._display_ids.get(display_id, []) if display_id is not None else []
            for index in shown:
                if not self._replace(index, output):
                    # An update counts against the cap like any output: a display updated in a loop with ever
                    # bigger data must not grow the reply past it.
                    self._truncate(None)
                    return self.outputs[-1]
            return {**output, "transient": msg.content.get("transient", {}), "update": True}
        if self._clear_pending:
            self._clear()
        if self.truncated:
            return None
        size = output_size(output)
        if self.size + size > self.limit:
            self._truncate(output)
            return self.outputs[-1]
        self.size += size
        if display_id is not None:
            self._display_ids.setdefault(display_id, []).append(len(self.outputs))
        last = self.outputs[-1] if self.outputs else None
        if (
            output["output_type"] == "stream"
            and last is not None
            and last["output_type"] == "stream"
            and last["name"] == output["name"]
        ):
            last["text"] += output["text"]
        else:
            self.outputs.append(output)
        if msg.content.get("transient"):
            return {**output, "transient": msg.content["transient"]}
        return output

    def _clear(self) -> None:
        self.outputs.clear()
        self._display_ids.clear()
        self.size = 0
        self._clear_pending = False

    def _replace(self, index: int, output: JSONDict) -> bool:
        """Replace an output in place; False (and nothing changed) when that would go past the cap."""
        if index < len(self.outputs):
            old = self.outputs[index]
            new = {**output, "output_type": old["output_type"]} | (
                {"execution_count": old["execution_count"]} if "execution_count" in old else {}
            )
            size = self.size - output_size(old) + output_size(new)
            if size > self.limit:
                return False
            self.outputs[index] = new
            self.size = size
        return True

    def _truncate(self, output: JSONDict | None) -> None:
        # Keep what fits of a text stream; anything else is dropped whole. Either way a marker says so.
        self.truncated = True
        room = max(self.limit - self.size, 0)
        if output is not None and output["output_type"] == "stream" and room > 0:
            kept = str(output["text"]).encode()[:room].decode(errors="ignore")
            self.outputs.append({**output, "text": kept})
        marker = TRUNCATION_MARKER.format(limit=self.limit)
        self.outputs.append({"output_type": "stream", "name": "stderr", "text": marker})
        self.size = self.limit


def _display_id(msg: KernelMessage) -> str | None:
    transient: Any = msg.content.get("transient") or {}
    value = transient.get("display_id") if isinstance(transient, dict) else None
    return str(value) if value is not None else None
