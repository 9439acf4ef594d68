"""How process state is stored: a part as a blob listed among the manifest's groups (``Entry``), or inline in
the manifest (``to_inline`` / ``from_inline``) for the small parts that change with nearly every cell."""

from __future__ import annotations

import base64
import pickle
from dataclasses import dataclass
from typing import Any

import xxhash

from .serialize import load_bytes, serialize


@dataclass(frozen=True)
class Entry:
    gid: str
    hash: str
    size: int
    serializer: str
    record: dict[str, Any]  # the manifest entry when not written this time (shared: it is only dumped)


def entry(hook: str, part: str, gid: str, hash: str, size: int, serializer: str) -> Entry:
    record = {"names": [], "hash": hash, "size": size, "serializer": serializer, "written": False,
              "process": hook, "part": part}  # fmt: skip
    return Entry(gid, hash, size, serializer, record)


def part_gid(hook: str, part: str) -> str:
    return "p" + xxhash.xxh64_hexdigest(f"{hook}\0{part}".encode())


def to_inline(value: Any, plain: bool, ns: dict[str, Any]) -> str:
    """An inline part: ``p:`` + base64 of a plain pickle (the C pickler, no blob framing: a few microseconds
    for the input history's open chunk), or ``b:`` + base64 of a blob."""
    if plain:
        return "p:" + base64.b64encode(pickle.dumps(value, protocol=5)).decode("ascii")
    blob = b"".join(bytes(chunk) for chunk in serialize({"state": value}, ns).chunks())
    return "b:" + base64.b64encode(blob).decode("ascii")


def from_inline(data: str, ns: dict[str, Any]) -> Any:
    kind, _, encoded = data.partition(":")
    raw = base64.b64decode(encoded)
    if kind == "p":
        return pickle.loads(raw)
    return load_bytes(bytearray(raw), ns)["state"]
