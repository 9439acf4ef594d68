"""How the benchmark talks to a gateway: REST with httpx (aiohttp for concurrent executes), the Jupyter kernel
WebSocket with websockets (JSON text frames, no compression), and the event loop beside the main thread that
keeps the asynchronous ones open."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

import aiohttp
import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect

from loadtests.common import BenchError

from .config import CODE, REQUEST_TIMEOUT, STARTUP_TIMEOUT, Json
from .processes import Target

T = TypeVar("T")
Request = Callable[[], Awaitable[float]]
"""One execute of ``1+1``, awaited to its end; returns its wall seconds."""


class LoopThread:
    """An asyncio loop in a thread of its own, so that the asynchronous clients (jupyter_client, websockets)
    stay open between measurement blocks while the synchronous REST client runs in the main thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bench-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if not self.thread.is_alive():
            self.loop.close()


async def timed_block(request: Request, n: int) -> list[float]:
    return [await request() for _ in range(n)]


# -- REST ----------------------------------------------------------------------------------------------------


def create_kernel(client: httpx.Client) -> str:
    response = client.post("/api/kernels", json={"name": "python3"}, timeout=STARTUP_TIMEOUT)
    if response.status_code != 201:
        raise BenchError(f"POST /api/kernels: HTTP {response.status_code}: {response.text[:500]}")
    kernel_id: str = response.json()["id"]
    return kernel_id


def create_session(client: httpx.Client) -> str:
    response = client.post("/sessions", timeout=STARTUP_TIMEOUT)
    if response.status_code != 201:
        raise BenchError(f"POST /sessions: HTTP {response.status_code}: {response.text[:500]}")
    session_id: str = response.json()["id"]
    return session_id


def delete_session(client: httpx.Client, session_id: str) -> None:
    with contextlib.suppress(httpx.HTTPError):
        client.delete(f"/sessions/{session_id}", timeout=60)


def rest_execute(client: httpx.Client, session: str | None, code: str = CODE) -> tuple[float, Json]:
    """``POST /execute``; (wall seconds, reply). Raises unless HTTP 200 and status ok."""
    body: Json = {"code": code} if session is None else {"code": code, "session": session}
    started = time.perf_counter()
    response = client.post("/execute", json=body)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise BenchError(f"POST /execute: HTTP {response.status_code}: {response.text[:500]}")
    result: Json = response.json()
    if result.get("status") != "ok":
        raise BenchError(f"POST /execute: {result}")
    return elapsed, result


def result_text(result: Json) -> str | None:
    outputs = result.get("outputs") or []
    texts = [o.get("data", {}).get("text/plain") for o in outputs if isinstance(o, dict)]
    return texts[-1] if texts else None


def check_result(result: Json, expected: str = "2") -> None:
    if result_text(result) != expected:
        raise BenchError(f"expected {expected}: {result}")


def healthz(client: httpx.Client) -> float:
    """GET /healthz: what HTTP and the client cost with no kernel involved."""
    started = time.perf_counter()
    response = client.get("/healthz")
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise BenchError(f"GET /healthz: HTTP {response.status_code}")
    return elapsed


class AsyncRest:
    """An async keep-alive aiohttp client, for executes that run at the same time (throughput, bursts).

    Not httpx: its asynchronous client spends ~1.9 ms of CPU per request (measured at e5dea1a, 8 sessions),
    more than the service it measures, in the one client process that shares the 2 cores with it; aiohttp's
    parser is C. The throughput levels record the client's CPU beside each figure."""

    def __init__(self, target: Target, connections: int) -> None:
        self.base = target.url.rstrip("/")
        self.headers = {**target.headers, "content-type": "application/json"}
        self.connections = connections
        self._client: aiohttp.ClientSession | None = None

    @property
    def client(self) -> aiohttp.ClientSession:
        # Made on first use, inside the loop that runs the requests (aiohttp binds a session to its loop).
        if self._client is None:
            connector = aiohttp.TCPConnector(limit=self.connections + 4)
            timeout = aiohttp.ClientTimeout(total=STARTUP_TIMEOUT)
            self._client = aiohttp.ClientSession(connector=connector, timeout=timeout, headers=self.headers)
        return self._client

    async def execute(self, session: str | None) -> tuple[float, Json]:
        body: Json = {"code": CODE} if session is None else {"code": CODE, "session": session}
        started = time.perf_counter()
        async with self.client.post(self.base + "/execute", data=orjson.dumps(body)) as response:
            raw = await response.read()
            status = response.status
        elapsed = time.perf_counter() - started
        result: Json = orjson.loads(raw) if status == 200 else {}
        if result.get("status") != "ok":
            raise BenchError(f"POST /execute: HTTP {status}: {raw[:500]!r}")
        check_result(result)
        return elapsed, result

    async def timed(self, session: str) -> float:
        return (await self.execute(session))[0]

    async def warm(self, session_ids: Sequence[str]) -> None:
        for _ in range(3):
            await asyncio.gather(*(self.execute(s) for s in session_ids))

    def loops(self, session_ids: Sequence[str]) -> list[Request]:
        return [functools.partial(self.timed, s) for s in session_ids]

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()


# -- the Jupyter kernel WebSocket ----------------------------------------------------------------------------


def execute_frame(msg_id: str, client_session: str) -> str:
    return orjson.dumps(
        {
            "header": {
                "msg_id": msg_id,
                "msg_type": "execute_request",
                "session": client_session,
                "username": "bench",
                "date": dt.datetime.now(dt.UTC).isoformat(),
                "version": "5.3",
            },
            "parent_header": {},
            "metadata": {},
            "content": {
                "code": CODE,
                "silent": False,
                "store_history": True,
                "user_expressions": {},
                "allow_stdin": False,
                "stop_on_error": True,
            },
            "buffers": [],
            "channel": "shell",
        }
    ).decode()


class Channels:
    """One Jupyter kernel WebSocket of one client session."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.client_session = uuid.uuid4().hex

    @classmethod
    async def open(cls, target: Target, kernel_id: str) -> Channels:
        ws = await connect(
            f"{target.ws_url}/api/kernels/{kernel_id}/channels",
            additional_headers=target.headers,
            compression=None,
            max_size=None,
            ping_interval=None,
            open_timeout=REQUEST_TIMEOUT,
            close_timeout=5,
        )
        return cls(ws)

    async def execute(self) -> float:
        """One execute_request; done when its execute_reply and its iopub ``status: idle`` have both arrived."""
        msg_id = uuid.uuid4().hex
        frame = execute_frame(msg_id, self.client_session)
        started = time.perf_counter()
        await self.ws.send(frame)
        replied = idle = False
        status = None
        async with asyncio.timeout(REQUEST_TIMEOUT):
            while not (replied and idle):
                raw = await self.ws.recv()
                if isinstance(raw, bytes):
                    continue  # a binary frame carries buffers: never one of ours for 1+1
                msg = orjson.loads(raw)
                if (msg.get("parent_header") or {}).get("msg_id") != msg_id:
                    continue
                channel = msg.get("channel")
                msg_type = msg.get("msg_type") or msg.get("header", {}).get("msg_type")
                if channel == "shell" and msg_type == "execute_reply":
                    replied = True
                    status = msg.get("content", {}).get("status")
                elif channel == "iopub" and msg_type == "status" and msg["content"].get("execution_state") == "idle":
                    idle = True
        elapsed = time.perf_counter() - started
        if status != "ok":
            raise BenchError(f"WebSocket execute failed: {status}")
        return elapsed

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()


async def open_all(target: Target, kernel_ids: Sequence[str]) -> list[Channels]:
    """A WebSocket to each kernel, and a few executes on each so that none is measured cold."""
    channels = [await Channels.open(target, kid) for kid in kernel_ids]
    for ch in channels:
        await timed_block(ch.execute, 5)
    return channels


async def close_all(channels: Sequence[Channels]) -> None:
    await asyncio.gather(*(ch.close() for ch in channels))
