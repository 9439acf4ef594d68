"""Where one checkpoint goes: files in a directory, or, when it is small, the cell's own ``execute_reply``.

Most cells change little: a counter, the tail of ``In`` and ``Out``. Writing that as files costs the kernel a
directory, a manifest and a blob file, and costs the service a thread hop and a dozen system calls to read them
back and delete them. So after a cell, while the checkpoint stays under ``limit`` bytes of blobs, it is held in
memory and travels in the metadata of the cell's ``execute_reply`` (under ``REPLY_KEY``; the service removes it
before any frontend sees the reply). The first blob that would go past the limit spills everything to the
directory, and the service reads it from there as before.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from ..types import REPLY_KEY
from .blob import Serialized, write_blob

__all__ = ["REPLY_KEY", "Outbox"]

REPLY_LIMIT = 64 * 1024
"""Blob bytes a checkpoint may carry in a reply; more goes to files (base64 grows it by a third)."""


class Outbox:
    """One checkpoint's blobs, held in memory up to ``limit`` bytes (0: files only), then in ``directory``."""

    def __init__(self, directory: str, limit: int = 0) -> None:
        self.directory = directory
        self.limit = limit
        self.held: dict[str, bytes] = {}
        self._held_bytes = 0
        self.spilled = limit <= 0
        self._made = False

    def put(self, gid: str, ser: Serialized) -> None:
        if not self.spilled and self._held_bytes + ser.size <= self.limit:
            self.held[gid] = b"".join(ser.chunks())
            self._held_bytes += ser.size
            return
        self.spill()
        write_blob(os.path.join(self.directory, f"{gid}.bin"), ser)

    def spill(self) -> None:
        """From now on everything goes to the directory (made here if it does not exist yet)."""
        if not self._made:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            self._made = True
        for gid, data in self.held.items():
            with open(os.path.join(self.directory, f"{gid}.bin"), "wb") as f:
                f.write(data)
        self.held.clear()
        self.spilled = True

    def finish(self, name: str, document: dict[str, Any]) -> dict[str, Any] | None:
        """Close the checkpoint with its manifest (or errors) document: written beside the blobs, or returned
        as what the cell's reply carries when nothing spilled."""
        if not self.spilled:
            blobs = {gid: base64.b64encode(data).decode("ascii") for gid, data in self.held.items()}
            return {name.removesuffix(".json"): document, "blobs": blobs}
        self.spill()
        write_json(os.path.join(self.directory, name), document)
        return None


def write_json(path: str, data: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    # dumps, not dump: json.dump encodes in pure Python, chunk by chunk; dumps uses the C encoder.
    text = json.dumps(data, separators=(",", ":"), default=str)
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
