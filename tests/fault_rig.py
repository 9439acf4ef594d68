"""The fault rig: two real replicas, a real Redis master with a real replica, a partitionable proxy in front of
Redis for each replica, and counter clients that keep a ledger of what the service acknowledged.

Every cell of a counter session is ``n += 1; log.append(<cell id>); n``. A client sends cells alternately to
both replicas and files each under what it learned: acknowledged (a REST reply with ``checkpoint.status:
committed``, or an ``execute_reply`` ok on the WebSocket), unknown (no answer, or an answer that says the
outcome is unknown: pending, 503 with ``cell: unknown``), or not run (refused before running, or run and
discarded: then the same cell id is sent again). The session's final ``log`` then proves the invariants:
every acknowledged id is in it, at the position its acknowledged ``n`` says, and no id is in it twice.

Used by tests/test_faults.py (invariants) and tests/fault_bench.py (measured unavailability).
"""

from __future__ import annotations

import ast
import itertools
import json
import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import websockets
from websockets.sync.client import ClientConnection, connect

from tests.blackhole import BlackholeProxy
from tests.redis_server import RedisServer, free_port
from tests.service import Service, start_service

TOKEN = "fault-token"
SIGNING_KEY = "0123456789abcdef0123456789abcdef"
LEASE_TTL = 3.0
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


# -- processes ---------------------------------------------------------------------------------------------


@dataclass
class Replica:
    """One gateway replica at a fixed port (so it can be restarted in place), behind its own Redis proxy."""

    name: str
    directory: Path
    proxy: BlackholeProxy
    args: list[str]
    port: int = field(default_factory=free_port)
    service: Service | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {"SKG_REDIS_URL": self.proxy.url, "SKG_SIGNING_KEY": SIGNING_KEY}
        self.service = start_service(self.directory, ["--port", str(self.port), *self.args], token=TOKEN, env=env)

    def signal_group(self, sig: int) -> None:
        """Signal the replica with its kernels, as a container crash or freeze takes every process in it."""
        assert self.service is not None
        with suppress(ProcessLookupError):
            os.killpg(self.service.proc.pid, sig)

    def kill(self) -> None:
        self.signal_group(signal.SIGKILL)
        assert self.service is not None
        self.service.proc.wait(10)

    def stop(self) -> None:
        if self.service is not None and self.service.proc.poll() is None:
            self.signal_group(signal.SIGCONT)
            self.kill()


class Rig:
    """Redis (master + replica, AOF fsync always) and replicas A and B, each reaching Redis through a proxy."""

    def __init__(self, directory: Path, replica_args: list[str] | None = None) -> None:
        self.directory = directory
        self.master = RedisServer(directory / "redis-1", persistent=True)
        self.standby = RedisServer(directory / "redis-2", persistent=True, extra=self._replica_of(self.master))
        args = ["--pool-size", "1", "--lease-ttl", str(LEASE_TTL), "--redis-wait-replicas", "1",
                *(replica_args or [])]  # fmt: skip
        self.proxies = [BlackholeProxy(self.master.port), BlackholeProxy(self.master.port)]
        self.a = Replica("a", directory / "a", self.proxies[0], args)
        self.b = Replica("b", directory / "b", self.proxies[1], args)

    @staticmethod
    def _replica_of(master: RedisServer) -> list[str]:
        return ["--replicaof", "127.0.0.1", str(master.port)]

    @property
    def replicas(self) -> list[Replica]:
        return [self.a, self.b]

    def start(self) -> None:
        self.master.start()
        self.standby.start()
        wait_until(lambda: _replicas_online(self.master) >= 1, "the Redis replica is in sync")
        for proxy in self.proxies:
            proxy.start()
        threads = [threading.Thread(target=r.start) for r in self.replicas]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for replica in self.replicas:
            assert replica.service is not None, f"replica {replica.name} did not start"

    def stop(self) -> None:
        for replica in self.replicas:
            replica.stop()
        for proxy in self.proxies:
            proxy.stop()
        self.master.stop()
        self.standby.stop()

    def restart_redis(self) -> None:
        """The master dies (kill -9) and comes back at its address from its append-only file."""
        assert self.master.proc is not None
        self.master.proc.kill()
        self.master.proc.wait(10)
        self.master.proc = None
        self.master.start()

    def fail_over(self) -> None:
        """The master dies; its replica is promoted and the proxies (a Service) follow it; a fresh replica of
        the new master takes the old one's place, so WAIT can be answered again."""
        assert self.master.proc is not None
        self.master.proc.kill()
        self.master.proc.wait(10)
        promoted = self.standby
        promoted.client().execute_command("REPLICAOF", "NO", "ONE")
        for proxy in self.proxies:
            proxy.retarget(promoted.port)
        fresh = RedisServer(self.directory / f"redis-{uuid.uuid4().hex[:6]}", persistent=True,
                            extra=self._replica_of(promoted))  # fmt: skip
        fresh.start()
        self.master, self.standby = promoted, fresh
        wait_until(lambda: _replicas_online(self.master) >= 1, "the new Redis replica is in sync")


def _replicas_online(server: RedisServer) -> int:
    try:
        info = server.client().info("replication")
    except Exception:
        return 0
    return sum(
        1 for k, v in info.items() if k.startswith("slave") and isinstance(v, dict) and v.get("state") == "online"
    )


@contextmanager
def running_rig(directory: Path, replica_args: list[str] | None = None) -> Iterator[Rig]:
    rig = Rig(directory, replica_args)
    with ExitStack() as stack:
        stack.callback(rig.stop)
        rig.start()
        yield rig


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
        self.stay = False  # the last replica answered (503, 421, 409): ask it again, it is alive

    def next_replica(self) -> Target:
        if not self.stay:
            self.turn += 1
        self.stay = False
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

    def retry(self, why: str, answered: bool = False) -> None:
        self.ledger.outcomes[why] += 1
        self.stay = answered
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
            self.stay = True
            if cell == "unknown":
                return self.unknown(f"{r.status_code} unknown")
            return self.retry(f"{r.status_code} {cell}", answered=True)
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
                return self.retry(f"ws {exc.response.status_code}", answered=True)
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


# -- one fault, from the client side ----------------------------------------------------------------------


@dataclass
class CaseResult:
    name: str
    unavailable: dict[str, float]  # face -> the longest wait between acknowledgements around the fault (s)
    outcomes: dict[str, dict[str, int]]
    problems: dict[str, list[str]]


Fault = Callable[[CounterClient], float]
"""Strikes (given the REST client, to time a strike right after one of its acknowledgements) and heals;
returns when it struck (time.monotonic())."""


def run_case(rig: Rig, name: str, fault: Fault, after: int = 3) -> CaseResult:
    """Counter clients (REST and WebSocket) run on fresh sessions owned by A; ``fault`` strikes; then both
    must make ``after`` more acknowledged cells, and the committed state must satisfy the invariants."""
    rest_session, ws_session = new_counter_sessions(rig.a)
    clients: dict[str, CounterClient] = {
        "rest": RestCounter(rig.replicas, rest_session),
        "ws": WsCounter(rig.replicas, ws_session),
    }
    for client in clients.values():
        client.start()
    try:
        for face, client in clients.items():
            wait_until(lambda c=client: len(c.ledger.acked) >= 2, f"{face} cells run before the fault")  # type: ignore[misc]
        struck = fault(clients["rest"])
        for face, client in clients.items():
            wait_until(lambda c=client: c.ledger.acks_after(struck) >= after,  # type: ignore[misc]
                       f"{face} cells are acknowledged again after {name}", timeout=120)  # fmt: skip
    finally:
        for client in clients.values():
            client.stopping.set()
        for client in clients.values():
            client.join(REQUEST_TIMEOUT + 10)
    problems = {}
    for face, client in clients.items():
        n, log = final_state(rig.replicas, client.session)
        problems[face] = verdict(client.ledger, n, log)
    return CaseResult(
        name=name,
        unavailable={f: round(c.ledger.longest_gap(struck), 3) for f, c in clients.items()},
        outcomes={f: dict(c.ledger.outcomes) for f, c in clients.items()},
        problems=problems,
    )


# -- the faults ----------------------------------------------------------------------------------------------

PAUSE = 2 * LEASE_TTL
PARTITION = 2 * LEASE_TTL


def kill_after_ack_and_restart(rig: Rig) -> Fault:
    def fault(client: CounterClient) -> float:
        client.acked_event.clear()
        wait_until(client.acked_event.is_set, "an acknowledgement to kill right after")
        struck = time.monotonic()
        rig.a.kill()
        rig.a.start()
        return struck

    return fault


def pause_owner(rig: Rig) -> Fault:
    def fault(client: CounterClient) -> float:
        struck = time.monotonic()
        rig.a.signal_group(signal.SIGSTOP)
        try:
            time.sleep(PAUSE)  # the fault's duration, not an ordering of events
        finally:
            rig.a.signal_group(signal.SIGCONT)
        return struck

    return fault


def partition_owner(rig: Rig) -> Fault:
    def fault(client: CounterClient) -> float:
        struck = time.monotonic()
        rig.a.proxy.partition()
        try:
            time.sleep(PARTITION)  # the fault's duration
        finally:
            rig.a.proxy.heal()
        return struck

    return fault


def restart_redis(rig: Rig) -> Fault:
    def fault(client: CounterClient) -> float:
        struck = time.monotonic()
        rig.restart_redis()
        return struck

    return fault


def fail_over_redis(rig: Rig) -> Fault:
    def fault(client: CounterClient) -> float:
        struck = time.monotonic()
        rig.fail_over()
        return struck

    return fault


CASES: list[tuple[str, Callable[[Rig], Fault]]] = [
    ("kill -9 the owner right after an ack, restart it at the same address", kill_after_ack_and_restart),
    (f"SIGSTOP the owner for {PAUSE:g} s", pause_owner),
    (f"partition the owner from Redis for {PARTITION:g} s (packets dropped)", partition_owner),
    ("restart Redis (kill -9, AOF)", restart_redis),
    ("fail Redis over to its replica", fail_over_redis),
]
