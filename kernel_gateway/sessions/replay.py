"""What a session's kernel said while no frontend was attached, kept to replay on reconnect.

A kernel WebSocket is cut for reasons that have nothing to do with the notebook: Knative's queue-proxy timeouts
(knative/serving#16169), an idle close, a network blip. The frontend reconnects within a second or so, to any
replica (it is relayed to the owner). Like jupyter_server, which buffers by session key while a kernel has no
WebSocket, the session keeps what arrived meanwhile (its broadcasts and the replies to the cut frontend's
requests) and replays it, in order, to the next connection that names the same client session. Bounded in
bytes and messages: past the bound the oldest go first, and the replay says how many were dropped.
"""

from __future__ import annotations

import logging
from collections import deque

from ..types import KernelMessage

log = logging.getLogger(__name__)


def message_size(msg: KernelMessage) -> int:
    """Bytes a message holds on the wire (its JSON parts as received, plus binary buffers; a service-made one
    has no raw parts: its content's length in UTF-8)."""
    parts = sum(map(len, msg.raw)) if msg.raw is not None else len(str(msg.content).encode())
    return parts + sum(map(len, msg.buffers)) if msg.buffers else parts


class ReplayBuffer:
    """A Subscriber that keeps messages for a client session until it reconnects."""

    def __init__(self, client_session: str, max_bytes: int, max_messages: int) -> None:
        self.client_session = client_session
        self.max_bytes = max_bytes
        self.max_messages = max_messages
        self.size = 0
        self.dropped = 0
        self._messages: deque[tuple[KernelMessage, int]] = deque()

    def deliver(self, msg: KernelMessage) -> None:
        size = message_size(msg)
        self._messages.append((msg, size))
        self.size += size
        while self._messages and (self.size > self.max_bytes or len(self._messages) > self.max_messages):
            _, old = self._messages.popleft()
            self.size -= old
            self.dropped += 1

    def __len__(self) -> int:
        return len(self._messages)

    def drain(self) -> list[KernelMessage]:
        """Everything kept, oldest first; the buffer is empty after."""
        if self.dropped:
            log.warning(
                "client session %s: %d messages were dropped while it was disconnected (buffer bound)",
                self.client_session, self.dropped,
            )  # fmt: skip
        kept = [m for m, _ in self._messages]
        self._messages.clear()
        self.size = 0
        return kept
