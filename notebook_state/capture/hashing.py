"""Content hashes and group ids: xxh3-128 over a blob's bytes, xxh64 over a group's sorted member names."""

from __future__ import annotations

from collections.abc import Iterable

import xxhash


def group_id(names: Iterable[str]) -> str:
    """A deterministic id for a group's membership: the same names always give the same id."""
    return xxhash.xxh64_hexdigest("\0".join(sorted(names)).encode("utf-8"))


class StreamHash:
    """Incremental xxh3-128 over a sequence of buffers, counting the bytes it saw (no copies made)."""

    def __init__(self) -> None:
        self._h = xxhash.xxh3_128()
        self.nbytes = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._h.update(data)
        self.nbytes += memoryview(data).nbytes

    def hexdigest(self) -> str:
        return self._h.hexdigest()
