"""Aliases and Protocols of the portable state: what a kernel manager must offer to checkpoint and restore."""

from __future__ import annotations

import re
from typing import Any, Protocol

JSONDict = dict[str, Any]
"""A decoded JSON object: a manifest, a report, a Jupyter message's content."""

SessionId = str
"""A session's id. A Jupyter kernel id *is* a session id."""

SESSION_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
"""Every id a store accepts: no glob characters, so that key patterns never match another session's keys."""


class KernelLink(Protocol):
    """What checkpointing needs of a running kernel: a stable id and a way to run silent code in it.

    The service's own kernels implement it; :class:`notebook_state.client.ClientKernel` adapts a plain
    ``jupyter_client`` client.
    """

    @property
    def id(self) -> str: ...

    async def execute_silent(self, code: str, timeout: float) -> JSONDict:
        """Run ``code`` silently (no history, no outputs) and return the ``execute_reply`` content."""
        ...


class StateObserver(Protocol):
    """Told of every checkpoint and restore, whichever face caused it: the metrics."""

    def checkpointed(self, written_bytes: int, seconds: float, committed: bool) -> None: ...

    def restored(self, seconds: float) -> None: ...


REPLY_KEY = "notebook_state.checkpoint"
"""The ``execute_reply`` metadata key under which a kernel hands over a small checkpoint (``capture.outbox``)."""
