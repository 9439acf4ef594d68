"""The service's end of one kernel's ZMQ sockets: read when a socket's file descriptor says so, send without a
future.

jupyter_client makes the sockets (``connect_shell`` and the rest: URLs, identities, CurveZMQ keys); what this
replaces is pyzmq's asyncio layer around them, which costs a future, an event-flag enum and several attribute
lookups per message: about a fifth of the service's CPU per cell when the kernel is quick. A ZMQ socket's
``FD`` is edge-triggered, so each wake-up takes every message there is (in batches, so that one chatty kernel
cannot hold the event loop), and every send is followed by another look, as a send can consume the signal of
a message that arrived meanwhile.

The sockets come from ``kernel_context``: libzmq retries a kernel that has not bound its sockets yet every few
milliseconds, and drops for good the channel of a kernel that sends a message frame bigger than ``MAX_MESSAGE``
(never buffered whole), so a hostile kernel cannot make the service hold whatever size it announces.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import zmq
import zmq.asyncio
import zmq.backend

from ..types import Channel

log = logging.getLogger(__name__)

_NOBLOCK = int(zmq.NOBLOCK)
_MORE = int(zmq.SNDMORE) | _NOBLOCK
_send_frame = zmq.backend.Socket.send
_poll = zmq.zmq_poll
"""pyzmq's own send, under its Python layer (type checks, and flags combined as enums, per frame)."""
_POLLIN = int(zmq.POLLIN)
_BATCH = 64
"""Messages taken from one socket before other work gets a turn."""

MAX_MESSAGE = 256 * 1024**2
"""The largest kernel message frame taken (four times what a WebSocket relays)."""
_RECONNECT_MS = 5

Receiver = Callable[[Channel, list[bytes]], None]
Signer = Callable[[Sequence[bytes]], bytes]


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


def kernel_context() -> zmq.asyncio.Context:
    """The ZMQ context of a replica's kernel sockets."""
    context = zmq.asyncio.Context()
    # The service connects before a new kernel has bound its sockets; zmq then retries every 100 ms by default,
    # which was most of a forked kernel's start. Unix sockets on this host: retrying is cheap.
    context.setsockopt(zmq.RECONNECT_IVL, _RECONNECT_MS)
    context.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE)
    return context


class Wire:
    def __init__(self, sockets: Mapping[Channel, zmq.Socket[Any]], receive: Receiver) -> None:
        self._loop = asyncio.get_running_loop()
        self._owned = dict(sockets)  # the sockets jupyter_client made: closed with the wire
        # Plain (synchronous) views of the same sockets: no future per call.
        self._socks: dict[Channel, zmq.Socket[Any]] = {
            channel: zmq.Socket.shadow(sock.underlying) for channel, sock in sockets.items()
        }
        self._receive = receive
        self._fds: dict[Channel, int] = {}
        for channel, sock in self._socks.items():
            fd = int(sock.getsockopt(zmq.FD))
            self._loop.add_reader(fd, self._drain, channel)
            self._fds[channel] = fd
            self._loop.call_soon(self._drain, channel)  # what arrived before the reader was there

    def send(self, channel: Channel, parts: list[Any]) -> None:
        sock = self._socks[channel]
        try:
            # ZMQ queues whole messages: one whose first frame it took is taken whole (else it rolls back).
            last = len(parts) - 1
            for i, part in enumerate(parts):
                _send_frame(sock, part, _MORE if i < last else _NOBLOCK)
        except zmq.Again:
            # The kernel has not taken its last thousand messages on this channel. Waiting for it, as
            # jupyter_client's own send does, would block every session of the replica on one kernel.
            log.warning("kernel's %s channel holds too many unread messages; message dropped", channel.value)
            return
        self._loop.call_soon(self._drain, channel)

    def _drain(self, channel: Channel) -> None:
        sock = self._socks.get(channel)
        if sock is None:
            return
        waiting = [(sock, _POLLIN)]
        for _ in range(_BATCH):
            try:
                # Asking first is cheaper than the exception a read of an empty socket raises; and zmq_poll asks
                # cheaper than the socket's EVENTS option (which pyzmq looks up as an enum on every call).
                if not _poll(waiting, 0):
                    return
                frames = _recv_multipart(sock)
            except zmq.Again:
                return
            except zmq.ZMQError as exc:
                log.warning("%s channel closed: %s", channel.value, exc)
                self._stop(channel)
                return
            try:
                self._receive(channel, frames)
            except Exception:
                log.exception("a message on %s could not be handled", channel.value)
        self._loop.call_soon(self._drain, channel)

    def _stop(self, channel: Channel) -> None:
        fd = self._fds.pop(channel, None)
        if fd is not None and not self._loop.is_closed():
            self._loop.remove_reader(fd)
        self._socks.pop(channel, None)

    def close(self) -> None:
        for channel in list(self._fds):
            self._stop(channel)
        self._socks.clear()
        for sock in self._owned.values():
            sock.close(linger=0)
        self._owned.clear()


def _recv_multipart(sock: zmq.Socket[Any]) -> list[bytes]:
    """pyzmq's ``recv_multipart``, asking each frame whether more follow instead of the socket (a third less)."""
    frame = sock.recv(_NOBLOCK, copy=False)
    frames = [frame.bytes]
    while frame.more:
        frame = sock.recv(_NOBLOCK, copy=False)
        frames.append(frame.bytes)
    return frames
