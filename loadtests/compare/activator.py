"""The scale-to-zero stand-in: a TCP front for one backend process, like Knative's activator and autoscaler.

A connection to a stopped backend starts it and is held until the backend is ready (the request waits, as
Knative's activator buffers it); the backend is stopped once no connection has been open through this front for
``idle_after`` seconds. A front can also have a ``direct_port``, standing in for the pod's queue-proxy: traffic
through it counts as activity too, and it listens only while the backend runs (a stopped replica's address
refuses connections, as a deleted pod's does). Gateway replicas advertise that address, so a request one replica
forwards to the owner keeps the owner up (as knative/components/forward-via-queue-proxy does on a cluster).
This is a stand-in for Knative on one machine, not Knative: no concurrency target, no revisions, no pod
scheduling. All fronts run on one event loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from loadtests.common import HOST, log

_CONNECT_TIMEOUT = 5.0


class Backend(Protocol):
    """A process the activator can start (returning once it is ready) and stop."""

    port: int

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def running(self) -> bool: ...


@dataclass(eq=False)
class _Conn:
    """One client connection: a request is in flight while the client has sent more recently than the backend
    answered; an upgraded (WebSocket) connection is in flight while it is open (Knative counts it so too,
    knative/serving#10835). An idle keep-alive connection is not: it does not keep a backend up."""

    up: float
    down: float = 0.0
    websocket: bool = False

    @property
    def in_flight(self) -> bool:
        return self.websocket or self.up > self.down


@dataclass
class Activator:
    name: str
    backend: Backend
    idle_after: float
    port: int = 0
    direct_port: int = 0
    closed: bool = False  # no more starts: the driver is tearing the model down
    paused: bool = True  # idle stops are off until the driver says so (phases where idle actions are measured)
    starts: list[float] = field(default_factory=list)  # seconds each on-demand start took
    stops: int = 0
    open: int = 0
    last_activity: float = field(default_factory=time.monotonic)
    conns: set[_Conn] = field(default_factory=set)
    _lock: asyncio.Lock | None = None
    _server: asyncio.Server | None = None
    _direct: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def listen(self) -> None:
        self._lock = asyncio.Lock()
        self._server = await asyncio.start_server(self._handle, HOST, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def ensure_started(self) -> None:
        assert self._lock is not None
        async with self._lock:
            if self.closed:
                raise ConnectionAbortedError(f"{self.name} is closed")
            if not self.backend.running():
                began = time.monotonic()
                await asyncio.to_thread(self.backend.start)
                self.starts.append(time.monotonic() - began)
            if self.direct_port and self._direct is None:
                self._direct = await asyncio.start_server(self._handle_direct, HOST, self.direct_port)

    async def stop_backend(self) -> None:
        assert self._lock is not None
        async with self._lock:
            if self._direct is not None:
                self._direct.close()
                self._direct = None
            if self.backend.running():
                await asyncio.to_thread(self.backend.stop)
                self.stops += 1

    async def idle_check(self) -> None:
        busy = any(c.in_flight for c in self.conns)
        idle = not busy and time.monotonic() - self.last_activity > self.idle_after
        if not self.paused and idle and self.backend.running():
            await self.stop_backend()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._relay(reader, writer, start=True)

    async def _handle_direct(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._relay(reader, writer, start=False)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, start: bool) -> None:
        conn = _Conn(up=time.monotonic())
        self.conns.add(conn)
        self.open += 1
        self.last_activity = conn.up
        try:
            try:
                if start:
                    await self.ensure_started()
                b_reader, b_writer = await asyncio.wait_for(
                    asyncio.open_connection(HOST, self.backend.port), _CONNECT_TIMEOUT
                )
            except Exception as exc:  # (the client sees its connection closed, as with a failed revision)
                log("compare", f"{self.name}: could not reach its backend: {type(exc).__name__}: {exc}"[:2000])
                writer.close()
                return

            async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, upstream: bool) -> None:
                with contextlib.suppress(OSError, asyncio.CancelledError):
                    while data := await src.read(65536):
                        now = self.last_activity = time.monotonic()
                        if upstream:
                            conn.up = now
                            conn.websocket = conn.websocket or b"upgrade: websocket" in data[:4096].lower()
                        else:
                            conn.down = now
                        dst.write(data)
                        await dst.drain()
                with contextlib.suppress(OSError):
                    dst.close()

            await asyncio.gather(pipe(reader, b_writer, True), pipe(b_reader, writer, False))
        finally:
            self.conns.discard(conn)
            self.open -= 1
            self.last_activity = time.monotonic()

    def close(self) -> None:
        for server in (self._server, self._direct):
            if server is not None:
                server.close()


class Fronts:
    """Every activator of a model, on one event loop thread that also runs their idle checks."""

    def __init__(self) -> None:
        self.activators: list[Activator] = []
        self._closing = False
        self._loop = asyncio.new_event_loop()
        # Starts and stops block a thread for seconds each; one user's must not queue behind another's (the
        # default executor has cpu_count + 4 threads), as Knative starts and stops each pod on its own.
        self._loop.set_default_executor(ThreadPoolExecutor(max_workers=64, thread_name_prefix="activator"))
        self._thread = threading.Thread(target=self._loop.run_forever, name="activators", daemon=True)
        self._thread.start()
        self._watcher = asyncio.run_coroutine_threadsafe(self._watch(), self._loop)

    def _call(self, coro: Coroutine[Any, Any, Any], timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _watch(self) -> None:
        while not self._closing:
            await asyncio.sleep(0.25)
            await asyncio.gather(*(a.idle_check() for a in self.activators), return_exceptions=True)

    def add(self, name: str, backend: Backend, idle_after: float, direct_port: int = 0) -> Activator:
        activator = Activator(name, backend, idle_after, direct_port=direct_port)
        self._call(activator.listen(), 10)
        self.activators.append(activator)
        return activator

    def set_paused(self, paused: bool) -> None:
        now = time.monotonic()
        for a in self.activators:
            a.paused = paused
            a.last_activity = max(a.last_activity, now) if not paused else a.last_activity

    def start(self, activator: Activator, timeout: float = 180.0) -> None:
        self._call(activator.ensure_started(), timeout)

    def stop(self, activator: Activator, timeout: float = 120.0) -> None:
        self._call(activator.stop_backend(), timeout)

    def stop_all(self, timeout: float = 120.0) -> None:
        """Scale every backend to zero now (what the idle timer would do later)."""
        self._call(self._gather(lambda a: a.stop_backend()), timeout)

    async def _gather(self, each: Callable[[Activator], Coroutine[Any, Any, None]]) -> None:
        await asyncio.gather(*(each(a) for a in self.activators))

    def running(self) -> int:
        return sum(1 for a in self.activators if a.backend.running())

    def close(self) -> None:
        """Stop taking connections first, so that nothing in flight starts a backend again; then stop them all."""
        for a in self.activators:
            a.closed = True
            self._loop.call_soon_threadsafe(a.close)
        with contextlib.suppress(Exception):
            self.stop_all()
        self._closing = True
        with contextlib.suppress(Exception):
            self._watcher.result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
