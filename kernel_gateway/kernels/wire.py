"""The service's end of one kernel's channels: ZMTP 3.0 (the NULL mechanism) spoken by asyncio straight over
the kernel's sockets, without libzmq on this side.

Why: libzmq hands every message through its IO thread (a thread wake-up and a mailbox signal per message) and
pyzmq reads each frame as a Python object; with a quick kernel that was about an eighth of the service's CPU
per cell. Here one read of the socket takes every frame that arrived, cut out by a few slices. The kernel's
side stays libzmq (ROUTER on shell, control and stdin; XPUB on iopub): we are DEALERs with the session's
identity (so stdin's ``input_request`` reaches us, as ipykernel sends it to the shell request's identity) and
a SUB subscribed to everything. A kernel that has not bound its sockets yet is retried, as libzmq would
reconnect; what is sent meanwhile waits. A connection is not re-made once it ends: the kernel's process is
gone then, which its liveness check reports.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..types import Channel

log = logging.getLogger(__name__)

Receiver = Callable[[Channel, list[bytes]], None]
Signer = Callable[[Sequence[bytes]], bytes]

GREETING = b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" + bytes(31)
"""ZMTP 3.0 (RFC 23), NULL mechanism, as a client. 3.0 rather than 3.1: the subscription is then a message
(``\\x01`` + prefix), which libzmq's XPUB takes from peers of either version."""
_GREETING_SIZE = 64
_MORE, _LONG, _COMMAND = 1, 2, 4
_SIZE = struct.Struct("!Q")
_RETRY_FIRST, _RETRY_MAX = 0.005, 0.1
MAX_QUEUED = 256 * 1024**2
"""Bytes a channel may hold unsent (a kernel not reading); past it messages are dropped, not the loop blocked."""
MAX_MESSAGE = 256 * 1024**2
"""The largest kernel message taken (four times what a WebSocket relays): a kernel that sends a bigger one
loses the channel, as it would otherwise make the service buffer whatever size it announces."""


def signer(key: bytes, digestmod: Any) -> Signer | None:
    """jupyter_client's signature of a message (``Session.sign``: the hex HMAC of its four JSON parts), from a
    keyed HMAC taken once: ``Session.sign`` looks its key up through traitlets and feeds the parts one by one,
    six messages a cell. None without a key (messages are then unsigned)."""
    if not key:
        return None
    keyed: Any = hmac.new(key, digestmod=digestmod)
    keyed = getattr(keyed, "_hmac", None) or keyed  # OpenSSL's HMAC under hmac.HMAC, where there is one: no Python

    def sign(parts: Sequence[bytes]) -> bytes:
        h = keyed.copy()
        h.update(b"".join(parts))
        digest: str = h.hexdigest()
        return digest.encode()

    return sign


@dataclass(frozen=True)
class Endpoint:
    """Where a channel's kernel socket listens: a Unix socket path (``ipc``), or a TCP host and port."""

    path: str | None = None
    host: str = "127.0.0.1"
    port: int = 0

    @classmethod
    def of(cls, transport: str, ip: str, port: int) -> Endpoint:
        # jupyter_client's URL of a channel (ConnectionFileMixin._make_url): ipc://{ip}-{port}, tcp://{ip}:{port}
        return cls(path=f"{ip}-{port}") if transport == "ipc" else cls(host=ip, port=port)


def _property(name: bytes, value: bytes) -> bytes:
    return bytes((len(name),)) + name + len(value).to_bytes(4, "big") + value


def _frame(body: bytes, flags: int = 0) -> bytes:
    size = len(body)
    head = bytes((flags, size)) if size < 256 else bytes((flags | _LONG,)) + _SIZE.pack(size)
    return head + body


def encode(parts: Sequence[Any]) -> bytes:
    """One ZMTP message of ``parts`` (bytes-like), every frame but the last flagged MORE."""
    out: list[Any] = []
    last = len(parts) - 1
    for i, part in enumerate(parts):
        size = len(part) if isinstance(part, bytes) else memoryview(part).nbytes
        more = _MORE if i < last else 0
        out.append(bytes((more, size)) if size < 256 else bytes((more | _LONG,)) + _SIZE.pack(size))
        out.append(part)
    return b"".join(out)


class Link(asyncio.Protocol):
    """One ZMTP connection: the handshake, then frames in and whole messages out."""

    def __init__(self, channel: Channel, socket_type: bytes, identity: bytes, receive: Receiver) -> None:
        self.channel = channel
        self._receive = receive
        ready = b"\x05READY" + _property(b"Socket-Type", socket_type)
        if identity:
            ready += _property(b"Identity", identity)
        self._hello = GREETING + _frame(ready, _COMMAND)
        self._unsent: list[bytes] = []
        self._unsent_bytes = 0
        if socket_type == b"SUB":
            self._unsent.append(_frame(b"\x01"))  # subscribed to every topic, first thing once open
        self.transport: asyncio.Transport | None = None
        self.open = False  # handshake done: messages flow
        self.closed = False
        self._greeted = False
        self._chunks: list[bytes] = []  # received bytes not yet cut into frames
        self._have = 0
        self._need = _GREETING_SIZE
        self._frames: list[bytes] = []  # the frames of a message not yet whole
        self._frames_size = 0  # their bytes

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self._hello)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            # The kernel's process ended (its liveness check tells the session) or it dropped us.
            log.info("kernel's %s channel closed: %s", self.channel.value, exc or "end of stream")
        self.closed = True
        self.open = False
        self.transport = None

    def send(self, message: bytes) -> None:
        transport = self.transport
        if self.open and transport is not None:
            if transport.get_write_buffer_size() > MAX_QUEUED:
                log.warning("kernel's %s channel holds too much unsent; message dropped", self.channel.value)
                return
            transport.write(message)
        elif not self.closed:
            if self._unsent_bytes > MAX_QUEUED:
                log.warning("kernel's %s channel is not connected; message dropped", self.channel.value)
                return
            self._unsent.append(message)
            self._unsent_bytes += len(message)

    def close(self) -> None:
        self.closed = True
        self.open = False
        if self.transport is not None:
            self.transport.abort()
            self.transport = None

    def data_received(self, data: bytes) -> None:
        if self._chunks:
            self._chunks.append(data)
            self._have += len(data)
            if self._have < self._need:
                return  # a big frame arrives in pieces: joined once it is whole, not at every piece
            data = b"".join(self._chunks)
            self._chunks = []
        pos = 0 if self._greeted else self._greet(data)
        if pos < 0:
            return
        end = len(data)
        frames = self._frames
        need = 2
        while True:
            if end - pos < 2:
                break
            flags = data[pos]
            if flags & _LONG:
                if end - pos < 9:
                    need = 9
                    break
                (size,) = _SIZE.unpack_from(data, pos + 1)
                start = pos + 9
            else:
                size = data[pos + 1]
                start = pos + 2
            if size > MAX_MESSAGE - self._frames_size:
                log.warning("kernel's %s channel: a message of more than %d bytes; channel closed",
                            self.channel.value, MAX_MESSAGE)  # fmt: skip
                self._frames, self._chunks, self._frames_size = [], [], 0
                self.close()
                return
            stop = start + size
            if stop > end:
                need = stop - pos
                break
            pos = stop
            if flags & _COMMAND:
                self._command(data[start:stop])
                if self.closed:
                    return
                continue
            frames.append(data[start:stop])
            self._frames_size += size
            if not flags & _MORE:
                self._frames_size = 0
                try:
                    self._receive(self.channel, frames)
                except Exception:
                    log.exception("a message on %s could not be handled", self.channel.value)
                if self.closed:
                    return
                frames = []
        if pos < end:
            rest = data[pos:]
            self._chunks = [rest]
            self._have = len(rest)
            self._need = need
        self._frames = frames

    def _greet(self, data: bytes) -> int:
        """Check the peer's greeting at the start of ``data``; the offset after it, or -1 (too short, or bad)."""
        if len(data) < _GREETING_SIZE:
            self._chunks = [data]
            self._have = len(data)
            self._need = _GREETING_SIZE
            return -1
        if data[0] != 0xFF or data[9] != 0x7F or data[10] < 3 or data[12:32].rstrip(b"\x00") != b"NULL":
            log.warning("kernel's %s channel: not a ZMTP 3 peer with the NULL mechanism", self.channel.value)
            self.close()
            return -1
        self._greeted = True
        return _GREETING_SIZE

    def _command(self, body: bytes) -> None:
        name = body[1 : 1 + body[0]] if body else b""
        if name == b"READY" and not self.open:
            self.open = True
            unsent, self._unsent, self._unsent_bytes = self._unsent, [], 0
            if unsent and self.transport is not None:
                self.transport.write(b"".join(unsent))
        elif name == b"ERROR":
            log.warning("kernel's %s channel refused us: %r", self.channel.value, body[7:])
            self.close()
        # Anything else (PING without heartbeats asked for, future commands) is not ours to answer.


class Wire:
    """The four channels of one kernel: shell, control and stdin as DEALERs named ``identity``, iopub as SUB."""

    def __init__(self, endpoints: Mapping[Channel, Endpoint], identity: bytes, receive: Receiver) -> None:
        loop = asyncio.get_running_loop()
        self._links: dict[Channel, Link] = {}
        self._tasks: list[asyncio.Task[None]] = []
        for channel, endpoint in endpoints.items():
            sub = channel is Channel.IOPUB
            link = Link(channel, b"SUB" if sub else b"DEALER", b"" if sub else identity, receive)
            self._links[channel] = link
            self._tasks.append(loop.create_task(_connect(link, endpoint)))

    def send(self, channel: Channel, parts: Sequence[Any]) -> None:
        self._links[channel].send(encode(parts))

    def connected(self) -> bool:
        """Every channel's handshake is done."""
        return all(link.open for link in self._links.values())

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for link in self._links.values():
            link.close()


async def _connect(link: Link, endpoint: Endpoint) -> None:
    """Connect, retrying while the kernel has not bound its socket yet (it may still be starting)."""
    loop = asyncio.get_running_loop()
    delay = _RETRY_FIRST
    while not link.closed:
        try:
            if endpoint.path is not None:
                await loop.create_unix_connection(lambda: link, endpoint.path)
            else:
                await loop.create_connection(lambda: link, endpoint.host, endpoint.port)
            return
        except (FileNotFoundError, ConnectionRefusedError):
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX)
        except OSError as exc:
            log.warning("kernel's %s channel: cannot connect: %s", link.channel.value, exc)
            link.closed = True
            return
