"""A plain ``jupyter_client`` kernel as a :class:`~notebook_state.types.KernelLink`.

For kernel managers other than the gateway's own (which talks to its kernels through one set of channels and
implements the link itself): checkpoint a kernel started with ``jupyter_client.manager.start_new_async_kernel``
and restore it into another.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from .types import JSONDict


class ClientKernel:
    """Runs the state layer's silent code through an ``AsyncKernelClient``'s shell channel.

    Replies to other requests that arrive meanwhile are skipped, so do not share the client with a frontend
    that waits for its own shell replies at the same time.
    """

    def __init__(self, client: Any, kernel_id: str | None = None) -> None:
        self.client = client
        self.id = kernel_id or uuid.uuid4().hex

    async def execute_silent(self, code: str, timeout: float) -> JSONDict:
        msg_id = self.client.execute(code, silent=True, store_history=False, allow_stdin=False)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no reply from kernel {self.id} within {timeout:g} s")
            try:
                reply = await self.client.get_shell_msg(timeout=left)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # jupyter_client raises queue.Empty on timeout
                raise TimeoutError(f"no reply from kernel {self.id} within {timeout:g} s") from exc
            if reply.get("parent_header", {}).get("msg_id") == msg_id:
                content: JSONDict = reply["content"]
                return content
