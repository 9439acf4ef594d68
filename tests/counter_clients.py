"""Counter clients: they run cells ``n += 1; log.append(<cell id>); n`` on one session, alternating between
replicas, and keep a ledger of what the service acknowledged.

Each cell is filed under what the client learned: acknowledged (a REST reply with ``checkpoint.status:
committed``, or an ``execute_reply`` ok on the WebSocket), unknown (no answer, or an answer that says the
outcome is unknown: pending, 503 with ``cell: unknown``), or not run (refused before running, or run and
discarded: then the same cell id is sent again). The session's final ``log`` then proves the invariants: every
acknowledged id is in it, at the position its acknowledged ``n`` says, and no id is in it twice.
"""

from __future__ import annotations

import ast
import itertools
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import websockets
from websockets.sync.client import ClientConnection, connect

TOKEN = "fault-token"
REQUEST_TIMEOUT = 30.0  # far beyond every bound: a request that takes this long hung
CELL = "n += 1\nlog.append({i})\nn"
INIT = "n = 0\nlog = []"
HEADERS = {"Authorization": f"token {TOKEN}"}


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting until {what}")


# -- clients -----------------------------------------------------------------------------------------------


@dataclass
class Ledger:
    acked: dict[int, int] = field(default_factory=dict)  # cell id -> n in its acknowledgement
    unknown: set[int] = field(default_factory=set)
    ack_times: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    hung: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ack(self, cell: int, value: int) -> None:
        with self.lock:
            self.acked[cell] = value
            self.ack_times.append(time.monotonic())

    def acks_after(self, moment: float) -> int:
        with self.lock:
            return sum(1 for t in self.ack_times if t > moment)

    def first_ack_after(self, moment: float) -> float | None:
        with self.lock:
            return next((t for t in self.ack_times if t > moment), None)

    def longest_gap(self, since: float) -> float:
        """The longest wait between two acknowledgements, from the last one before ``since`` on."""
        with self.lock:
            before = [t for t in self.ack_times if t <= since]
            times = [*before[-1:], *(t for t in self.ack_times if t > since)]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def result_value(outputs: list[dict[str, Any]]) -> str | None:
    found = [o["data"]["text/plain"] for o in outputs if o.get("output_type") == "execute_result"]
    return found[-1] if found else None


class Target(Protocol):
    """A replica a client can reach."""

    @property
    def name(self) -> str: ...

    @property
    def url(self) -> str: ...


class CounterClient(threading.Thread):
    """Runs counter cells against one session until stopped, alternating between the replicas."""

    def __init__(self, targets: Sequence[Target], session: str) -> None:
        super().__init__(daemon=True)
        self.targets = list(targets)
        self.session = session
        self.ledger = Ledger()
        self.stopping = threading.Event()
        self.acked_event = threading.Event()  # set at every acknowledgement
        self.turn = 0
        self.cell = 1

    def next_replica(self) -> Target:
        """Round robin, as a balancer without stickiness sends requests."""
        self.turn += 1
        return self.targets[self.turn % len(self.targets)]

    def acknowledged(self, value: int) -> None:
        self.ledger.ack(self.cell, value)
        self.ledger.outcomes["acked"] += 1
        self.cell += 1
        self.acked_event.set()

    def unknown(self, why: str) -> None:
        self.ledger.unknown.add(self.cell)
        self.ledger.outcomes[why] += 1
        self.cell += 1

    def retry(self, why: str) -> None:
        self.ledger.outcomes[why] += 1
        time.sleep(0.05)  # pacing only, between attempts at the same cell

    def run(self) -> None:
        while not self.stopping.is_set():
            self.step()

    def step(self) -> None:
        raise NotImplementedError


class RestCounter(CounterClient):
    def step(self) -> None:
        replica = self.next_replica()
        body = {"session": self.session, "code": CELL.format(i=self.cell)}
        try:
            r = httpx.post(f"{replica.url}/execute", json=body, headers=HEADERS, timeout=REQUEST_TIMEOUT)
        except httpx.ConnectError:
            return self.retry("refused")  # never sent
        except httpx.TimeoutException as exc:
            self.ledger.hung.append(f"{replica.name}: {exc!r}")
            return self.unknown("timeout")
        except httpx.TransportError:
            return self.unknown("cut")  # sent, then the connection broke: it may have run
        if r.status_code == 200:
            reply = r.json()
            value = result_value(reply["outputs"])
            checkpoint = (reply.get("checkpoint") or {}).get("status")
            if reply["status"] == "ok" and checkpoint == "committed" and value is not None:
                return self.acknowledged(int(value))
            return self.unknown(f"200 {reply['status']}/{checkpoint}")
        if r.status_code in (409, 421, 503):
            cell = r.json().get("cell", "not saved" if r.status_code == 409 else "not run")
            if cell == "unknown":
                return self.unknown(f"{r.status_code} unknown")
            return self.retry(f"{r.status_code} {cell}")
        self.ledger.unexpected.append(f"{replica.name}: {r.status_code} {r.text[:300]}")
        return self.unknown(f"{r.status_code}")


class WsCounter(CounterClient):
    """The same cells over the kernel WebSocket; a cell whose execute_reply never came is unknown."""

    conn: ClientConnection | None = None

    def step(self) -> None:
        if self.conn is None:
            replica = self.next_replica()
            url = "ws" + replica.url.removeprefix("http") + f"/api/kernels/{self.session}/channels"
            try:
                self.conn = connect(url, additional_headers=HEADERS, open_timeout=REQUEST_TIMEOUT, max_size=None)
                self.conn.__enter__()  # the connection lives across steps; closed when the client stops
            except websockets.InvalidStatus as exc:
                return self.retry(f"ws {exc.response.status_code}")
            except (OSError, websockets.InvalidHandshake):
                return self.retry("ws refused")
            except TimeoutError:
                self.ledger.hung.append(f"{replica.name}: handshake")
                return self.retry("ws timeout")
        try:
            self.run_cell(self.conn)
        except websockets.ConnectionClosed:
            self.conn = None
            self.unknown("ws closed")
        except TimeoutError:
            self.ledger.hung.append("ws cell")
            self.conn.close()
            self.conn = None
            self.unknown("ws timeout")

    def run_cell(self, conn: ClientConnection) -> None:
        msg_id = uuid.uuid4().hex
        content = {"code": CELL.format(i=self.cell), "silent": False, "store_history": True,
                   "user_expressions": {}, "allow_stdin": False, "stop_on_error": True}  # fmt: skip
        header = {"msg_id": msg_id, "msg_type": "execute_request", "session": "fault", "username": "t",
                  "version": "5.3", "date": ""}  # fmt: skip
        conn.send(json.dumps({"channel": "shell", "header": header, "parent_header": {}, "metadata": {},
                              "content": content, "buffers": []}))  # fmt: skip
        value = None
        deadline = time.monotonic() + REQUEST_TIMEOUT
        while True:
            msg = json.loads(conn.recv(timeout=max(deadline - time.monotonic(), 0.01)))
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["header"]["msg_type"]
            if kind == "execute_result":
                value = msg["content"]["data"]["text/plain"]
            elif kind == "execute_reply":
                if msg["content"]["status"] == "ok" and value is not None:
                    return self.acknowledged(int(value))
                return self.unknown(f"ws {msg['content'].get('ename', msg['content']['status'])}")

    def run(self) -> None:
        try:
            super().run()
        finally:
            if self.conn is not None:
                with suppress(Exception):
                    self.conn.close()


# -- sessions and their verdict -----------------------------------------------------------------------------


def rest(replica: Target, code: str, session: str | None = None, timeout: float = 60.0) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, **({"session": session} if session else {})}
    r = httpx.post(f"{replica.url}/execute", json=body, headers=HEADERS, timeout=timeout)
    assert r.status_code == 200, r.text
    reply: dict[str, Any] = r.json()
    return reply


def new_counter_sessions(owner: Target) -> tuple[str, str]:
    """A REST session and a WebSocket session, both owned by ``owner``, each with ``n = 0; log = []``."""
    rest_session = rest(owner, INIT)["session"]
    r = httpx.post(f"{owner.url}/api/kernels", json={}, headers=HEADERS, timeout=60)
    assert r.status_code == 201, r.text
    ws_session = r.json()["id"]
    rest(owner, INIT, ws_session)
    return rest_session, ws_session


def final_state(targets: Sequence[Target], session: str) -> tuple[int, list[int]]:
    """The session's committed counter and log, read through whichever replica answers (read-only cell)."""
    found: dict[str, Any] = {}

    def read() -> bool:
        for replica in targets:
            with suppress(httpx.HTTPError):
                r = httpx.post(f"{replica.url}/execute", json={"session": session, "code": "(n, log)"},
                               headers=HEADERS, timeout=REQUEST_TIMEOUT)  # fmt: skip
                if r.status_code == 200 and r.json()["status"] == "ok":
                    found["value"] = result_value(r.json()["outputs"])
                    return True
        return False

    wait_until(read, f"session {session} answers")
    n, log = ast.literal_eval(found["value"])
    return n, log


def verdict(ledger: Ledger, n: int, log: list[int]) -> list[str]:
    """Every way the run broke an invariant (empty: none)."""
    problems = []
    if len(log) != len(set(log)):
        problems.append(f"cells ran twice: {sorted(i for i, c in Counter(log).items() if c > 1)}")
    lost = sorted(i for i in ledger.acked if i not in log)
    if lost:
        problems.append(f"acknowledged cells lost: {lost}")
    misplaced = {i: v for i, v in ledger.acked.items() if i in log and log.index(i) + 1 != v}
    if misplaced:
        problems.append(f"acknowledged n disagrees with the committed log: {misplaced}")
    if n != len(log):
        problems.append(f"n = {n} but {len(log)} cells in the log")
    if ledger.hung:
        problems.append(f"requests hung: {ledger.hung}")
    if ledger.unexpected:
        problems.append(f"unexpected answers: {ledger.unexpected}")
    return problems
