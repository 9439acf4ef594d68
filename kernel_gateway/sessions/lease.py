"""This replica's lease on one session, and until when it is certainly still valid.

The store expires a lease ``ttl`` after the renewal that set it, counted from when the store ran it, which is
after this replica sent it. So the lease is certainly valid until ``sent + ttl`` on this replica's monotonic
clock (which keeps counting while the process is paused or the machine is busy); a margin covers the moment
between checking and acting. Past that instant the replica stops executing the session: another replica may
already hold it.
"""

from __future__ import annotations

import time

from notebook_state.store import Fence


def lease_margin(ttl: float) -> float:
    """Safety margin before the lease's end: a tenth of it, at least 0.1 s and at most 2 s."""
    return min(max(ttl / 10, 0.1), 2.0)


class HeldLease:
    def __init__(self, fence: Fence, ttl: float, sent_at: float) -> None:
        self.fence = fence
        self.ttl = ttl
        self.margin = lease_margin(ttl)
        self.valid_until = sent_at + ttl - self.margin
        self.lost = False

    @property
    def epoch(self) -> int:
        return self.fence.epoch

    def renewed(self, sent_at: float) -> None:
        """A renewal sent at ``sent_at`` (monotonic) succeeded."""
        self.valid_until = max(self.valid_until, sent_at + self.ttl - self.margin)

    def valid(self) -> bool:
        return not self.lost and time.monotonic() < self.valid_until

    def remaining(self) -> float:
        return self.valid_until - time.monotonic()


def now() -> float:
    """The clock leases are measured with."""
    return time.monotonic()
