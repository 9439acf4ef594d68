"""Where a session's kernel comes from: the warm pool, or on a cold start the replica's first kernel.

A cold start boots one kernel before anything else (``prestart``), so that the restore that woke the replica
does not wait for the pool or the kernel zygote; the warm pool starts once that kernel is up and the replica
has started, so that on a small machine they do not boot alongside it or alongside the service's imports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping

from .factory import KernelFactory
from .kernel import Kernel, KernelState
from .pool import REFILL_DELAY, KernelPool

log = logging.getLogger(__name__)

# A replica's first kernel waits for the session it was started for (a cold start's restore) until the warm
# pool has a kernel ready, or at most this long (no pool), then goes.
FIRST_KERNEL_HOLD = 10.0


class KernelSupply:
    """The replica's kernels before a session takes them: the first kernel of a cold start and the warm pool."""

    def __init__(self, factory: KernelFactory, kernel_name: str, pool_size: int, stopping: Callable[[], bool]) -> None:
        self.factory = factory
        self.kernel_name = kernel_name
        self.pool = KernelPool(self._pool_kernel, kernel_name, pool_size)
        # The replica is draining: no pool is started any more (it would only be shut down again).
        self._stopping = stopping
        self._pool_grew = asyncio.Event()
        self._first: asyncio.Task[Kernel] | None = None  # the first kernel, until a session takes it
        self._expiry: asyncio.Task[None] | None = None
        self._prestarted = False
        self._first_done = False
        self._started = False

    def prestart(self) -> None:
        """Boot the first kernel now, before the rest of the replica has started: a restore that finds the pool
        empty (a cold start) takes it. It is exec'd without the preloaded modules: the restore's first result
        waits neither for them nor for the kernel zygote's boot."""
        if self._prestarted:
            return
        self._prestarted = True
        loop = asyncio.get_running_loop()
        first = loop.create_task(self.factory.start(self.kernel_name, None, preload=False, fork=False))
        self._first = first
        first.add_done_callback(lambda _: self._first_up())
        self._expiry = loop.create_task(self._expire_first(first))

    def start(self) -> None:
        """The replica has started: the pool may fill (at once, or once the first kernel is up)."""
        self._started = True
        self._fill_pool()

    def _first_up(self) -> None:
        self._first_done = True
        self._fill_pool()

    def _fill_pool(self) -> None:
        """Start the pool once the first kernel is up and start() has run (whichever comes last)."""
        if self._stopping() or not self._started or (self._prestarted and not self._first_done):
            return
        # Launching a kernel blocks the loop for a moment: when a restore already took the first kernel, its
        # first result goes before the pool's first launch (as the pool itself waits after a kernel is taken).
        delay = REFILL_DELAY if self._prestarted and self._first is None else 0.0
        asyncio.get_running_loop().call_later(delay, lambda: None if self._stopping() else self.pool.start())

    async def _pool_kernel(self, name: str, env: Mapping[str, str] | None) -> Kernel:
        kernel = await self.factory.start(name, env)
        self._pool_grew.set()
        return kernel

    async def _expire_first(self, first: asyncio.Task[Kernel]) -> None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait({first})
            deadline = loop.time() + FIRST_KERNEL_HOLD
            while self._first is first and self.pool.ready_count == 0 and loop.time() < deadline:
                self._pool_grew.clear()
                # asyncio.timeout, not wait_for: Python 3.11's wait_for can lose close()'s cancel.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(deadline - loop.time()):
                        await self._pool_grew.wait()
        finally:
            if self._first is first:  # no session took it
                self._first = None
                if first.done() and not first.cancelled() and first.exception() is None:
                    await first.result().shutdown(now=True)
                else:
                    # Waited for: a cancelled start shuts its kernel down, before the factory closes under it.
                    first.cancel()
                    await asyncio.gather(first, return_exceptions=True)

    async def _first_kernel(self, name: str) -> Kernel | None:
        """The replica's first kernel, for the one session that asks first; None when taken or failed."""
        first = self._first
        if first is None or name != self.kernel_name:
            return None
        self._first = None
        try:
            kernel = await first
        except Exception as exc:
            log.warning("first kernel failed to start (%s): taking one from the pool", exc)
            return None
        if kernel.state is not KernelState.READY:
            await kernel.shutdown(now=True)
            return None
        return kernel

    async def kernel(self, name: str, env: Mapping[str, str], restore: bool) -> Kernel:
        """A kernel from the pool; for a restore that finds it empty (a cold start), the replica's first kernel,
        booting since the start."""
        if restore and self.pool.ready_count == 0:
            first = await self._first_kernel(name)
            if first is not None:
                return first
        return await self.pool.acquire(name, env)

    async def stop_filling(self) -> None:
        """The replica drains: the warm pool is not filled any more (``KernelPool.stop_filling``)."""
        await self.pool.stop_filling()

    async def close(self) -> None:
        """Shut down every kernel no session took, then the factory (the zygote, the ZMQ context)."""
        if self._expiry is not None:
            self._expiry.cancel()
            await asyncio.gather(self._expiry, return_exceptions=True)
        await self.pool.close()
        await self.factory.close()
