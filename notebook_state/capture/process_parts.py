"""How process state is stored: a part as a blob listed among the manifest's groups (``Entry``), or inline in
the manifest (``to_inline`` / ``from_inline``) for the small parts that change with nearly every cell."""

from __future__ import annotations

import base64
import pickle
from dataclasses import dataclass
from typing import Any

import xxhash

from .serialize import is_plain_data, load_bytes, serialize


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


def to_inline(value: Any, plain: bool, ns: dict[str, Any]) -> Any:
    """An inline part: ``{"json": value}`` for JSON data (the manifest is JSON anyway: the input history's open
    chunk costs nothing to encode), ``p:`` + base64 of a plain pickle, or ``b:`` + base64 of a blob."""
    if plain and _json(value, 3):
        return {"json": value}
    if plain or is_plain_data(value):
        return "p:" + base64.b64encode(pickle.dumps(value, protocol=5)).decode("ascii")
    blob = b"".join(bytes(chunk) for chunk in serialize({"state": value}, ns).chunks())
    return "b:" + base64.b64encode(blob).decode("ascii")


def _json(value: Any, depth: int) -> bool:
    """Whether ``value`` comes back from JSON as it went in (tuples come back as lists)."""
    if value is None or type(value) in (str, int, bool):
        return True
    if depth and type(value) in (list, tuple):
        return all(type(v) is str for v in value) or all(_json(v, depth - 1) for v in value)
    return False


def from_inline(data: Any, ns: dict[str, Any]) -> Any:
    if isinstance(data, dict):
        return data["json"]
    kind, _, encoded = data.partition(":")
    raw = base64.b64decode(encoded)
    if kind == "p":
        return pickle.loads(raw)
    return load_bytes(bytearray(raw), ns)["state"]
