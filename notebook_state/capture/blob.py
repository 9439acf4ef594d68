"""The blob: one alias group's pickle in a file, its large buffers out of band (``serialize.py`` makes the
pickle and reads it back).

Layout (all integers little-endian)::

    b"NBSTATE1" | serializer (1 byte: b"c" cloudpickle, b"d" dill) | 3 zero bytes | u32 n_buffers |
    u64 stream_length | n_buffers x u64 buffer_length | stream | (zero padding to 64, buffer)*

Buffers start on 64-byte boundaries, so an array rebuilt on the file's bytes is aligned as numpy wants it.
The hash (xxh3-128) is over exactly the bytes of the file, so ``xxh3_128(file) == manifest hash``.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from .hashing import StreamHash

MAGIC = b"NBSTATE1"
_ALIGN = 64
_FIXED = struct.Struct("<8s1s3xIQ")
_CODES = {"cloudpickle": b"c", "dill": b"d"}
_NAMES = {v: k for k, v in _CODES.items()}


@dataclass
class Serialized:
    serializer: str
    header: bytes
    stream: memoryview
    buffers: list[memoryview] = field(default_factory=list)
    hash: str = ""
    size: int = 0

    def chunks(self) -> Iterator[bytes | memoryview]:
        yield self.header
        yield self.stream
        offset = len(self.header) + self.stream.nbytes
        for buf in self.buffers:
            pad = -offset % _ALIGN
            if pad:
                yield b"\0" * pad
            yield buf
            offset += pad + buf.nbytes


def pack(serializer: str, stream: memoryview, buffers: list[memoryview]) -> Serialized:
    """A blob of ``stream`` and its out-of-band ``buffers``, hashed as its file's bytes (nothing is copied)."""
    header = _FIXED.pack(MAGIC, _CODES[serializer], len(buffers), stream.nbytes)
    header += b"".join(struct.pack("<Q", b.nbytes) for b in buffers)
    ser = Serialized(serializer, header, stream, buffers)
    h = StreamHash()
    for chunk in ser.chunks():
        h.update(chunk)
    ser.hash, ser.size = h.hexdigest(), h.nbytes
    return ser


def unpack(data: bytearray) -> tuple[str, memoryview, list[memoryview]]:
    """The serializer, pickle stream and buffers of a blob held in memory (views into ``data``, not copies)."""
    view = memoryview(data)
    magic, code, nbuf, stream_len = _FIXED.unpack_from(view, 0)
    if magic != MAGIC or code not in _NAMES:
        raise ValueError("not a notebook_state blob")
    offset = _FIXED.size
    lengths = [struct.unpack_from("<Q", view, offset + 8 * i)[0] for i in range(nbuf)]
    offset += 8 * nbuf
    stream = view[offset : offset + stream_len]
    offset += stream_len
    buffers = []
    for length in lengths:
        offset += -offset % _ALIGN
        buffers.append(view[offset : offset + length])
        offset += length
    return _NAMES[code], stream, buffers


def write_blob(path: str, ser: Serialized) -> None:
    with open(path, "wb") as f:
        for chunk in ser.chunks():
            f.write(chunk)


def read_blob(path: str) -> bytearray:
    """A blob file in one writable buffer (arrays are rebuilt on it, not copied)."""
    with open(path, "rb") as f:
        data = bytearray(os.fstat(f.fileno()).st_size)  # one copy: straight from the file into the buffer
        f.readinto(data)
    return data
