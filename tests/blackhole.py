"""A TCP proxy on loopback that can cut its traffic like a network partition does, for fault tests.

``partition()`` makes it a black hole: bytes stop flowing both ways (nothing is refused, nothing answers; TCP
keeps the connections open) and new connections are accepted but never served, as when packets are dropped.
``heal()`` lets traffic flow again. ``retarget(port)`` sends new connections elsewhere and cuts the old ones,
as a Kubernetes Service does when the Redis master it points at changes (a failover).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_CHUNK = 65536


class BlackholeProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._open = asyncio.Event()  # set: traffic flows
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("proxy did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._loop.run_forever()

    async def _serve(self) -> None:
        self._open.set()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        self._writers.add(writer)
        try:
            await self._open.wait()  # a partitioned proxy holds new connections unanswered
            try:
                b_reader, b_writer = await asyncio.open_connection(*self.target)
            except OSError:
                return
            self._writers.add(b_writer)
            try:
                await asyncio.gather(self._pipe(reader, b_writer), self._pipe(b_reader, writer))
            finally:
                self._writers.discard(b_writer)
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(OSError):
                writer.close()

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while True:
                await self._open.wait()
                data = await src.read(_CHUNK)
                if not data:
                    break
                # Read before the partition, delivered after it heals: a partition delays, it never reorders.
                await self._open.wait()
                dst.write(data)
                await dst.drain()
        with contextlib.suppress(OSError):
            dst.close()

    def _call(self, fn: object) -> None:
        done = threading.Event()

        def run() -> None:
            try:
                fn()  # type: ignore[operator]
            finally:
                done.set()

        self._loop.call_soon_threadsafe(run)
        if not done.wait(10):
            raise TimeoutError("proxy did not answer")

    def partition(self) -> None:
        self._call(self._open.clear)

    def heal(self) -> None:
        self._call(self._open.set)

    def retarget(self, port: int) -> None:
        def switch() -> None:
            self.target = ("127.0.0.1", port)
            for writer in list(self._writers):
                writer.close()

        self._call(switch)

    def stop(self) -> None:
        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                writer.close()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            self._loop.stop()

        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(shutdown()))
        self._thread.join(10)


@contextmanager
def blackhole_proxy(target_port: int) -> Iterator[BlackholeProxy]:
    proxy = BlackholeProxy(target_port)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
