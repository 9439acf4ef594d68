"""The warm pool: kernels started ahead of need, so that a new session does not wait for a kernel to boot."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping

from .kernel import Kernel, KernelStartFailed, KernelState

log = logging.getLogger(__name__)

KernelStarter = Callable[[str, Mapping[str, str] | None], Awaitable[Kernel]]
"""Starts a ready kernel of the named kernelspec with extra environment variables."""

_RETRY_DELAY = 2.0
# Starting a kernel blocks the event loop for a few milliseconds (fork, connection file): wait a moment after
# a kernel is taken so that the new session's first cell does not pay for its replacement.
REFILL_DELAY = 0.5


class KernelPool:
    """Keeps ``size`` ready kernels of one kernelspec; refills in the background as they are taken."""

    def __init__(self, starter: KernelStarter, kernel_name: str, size: int) -> None:
        self._start = starter
        self.kernel_name = kernel_name
        self.size = size
        self._ready: deque[Kernel] = deque()
        self._wakeup = asyncio.Event()
        self._filler: asyncio.Task[None] | None = None
        self._closed = False
        self._filling = True  # until the replica drains (stop_filling) or the pool closes

    @property
    def ready_count(self) -> int:
        return len(self._ready)

    def start(self) -> None:
        if self._filler is None and self.size > 0 and self._filling:
            self._filler = asyncio.get_running_loop().create_task(self._fill())

    async def _fill(self) -> None:
        # One kernel at a time: on a small machine, booting several at once slows each of them and the
        # cells already running.
        # The filler stops on close() and stop_filling() even when the cancel is lost: Python 3.11's
        # asyncio.wait_for returns the result of a start that finished in the same turn as the cancel, and
        # close() would await it for ever.
        while self._filling:
            while len(self._ready) < self.size and self._filling:
                try:
                    kernel = await self._start(self.kernel_name, None)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.error("pool: kernel %r failed to start: %s", self.kernel_name, exc)
                    await asyncio.sleep(_RETRY_DELAY)
                    continue
                if self._closed:
                    await kernel.shutdown(now=True)
                    return
                self._ready.append(kernel)  # stopped but open: a running session may still take it
            if not self._filling:
                return
            self._wakeup.clear()
            await self._wakeup.wait()
            await asyncio.sleep(REFILL_DELAY)

    async def acquire(self, kernel_name: str, env: Mapping[str, str] | None = None) -> Kernel:
        """A ready kernel: from the pool when it serves ``kernel_name``, else started now."""
        if kernel_name == self.kernel_name and self.size > 0:
            kernel = self._take()
            if kernel is not None:
                return kernel
        try:
            return await self._start(kernel_name, env)
        except KernelStartFailed:
            raise
        except Exception as exc:
            raise KernelStartFailed(f"kernel {kernel_name!r} did not start: {exc}") from exc

    def _take(self) -> Kernel | None:
        while self._ready:
            kernel = self._ready.popleft()
            self._wakeup.set()
            if kernel.state is KernelState.READY:
                return kernel
            asyncio.get_running_loop().create_task(kernel.shutdown(now=True))
        return None

    async def stop_filling(self) -> None:
        """The replica drains: no new session will take a kernel, so none is started for the pool any more (a
        start under way is cancelled). The ready kernels stay until close(): a running session whose kernel
        dies or hangs takes one."""
        self._filling = False
        self._wakeup.set()
        if self._filler is not None:
            self._filler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._filler

    async def close(self) -> None:
        self._closed = True
        await self.stop_filling()
        self._filler = None
        kernels = list(self._ready)
        self._ready.clear()
        await asyncio.gather(*(k.shutdown(now=True) for k in kernels), return_exceptions=True)
