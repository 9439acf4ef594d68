"""The fault rig: two real replicas, a real Redis master with a real replica, a partitionable proxy in front of
Redis for each replica, the faults the suite injects, and one case run from the client side
(tests/counter_clients.py keeps the ledger of what was acknowledged).

Used by tests/test_faults.py (invariants) and tests/fault_bench.py (measured unavailability).
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.blackhole import BlackholeProxy
from tests.counter_clients import (
    REQUEST_TIMEOUT,
    TOKEN,
    CounterClient,
    RestCounter,
    Target,
    WsCounter,
    final_state,
    new_counter_sessions,
    verdict,
    wait_until,
)
from tests.redis_server import RedisServer, free_port
from tests.service import Service, start_service

SIGNING_KEY = "0123456789abcdef0123456789abcdef"
LEASE_TTL = 3.0


def signal_tree(pid: int, sig: int) -> None:
    """Signal a process and every process it started (kernels, sandboxed ones in sessions of their own
    included), as a container crash or freeze takes every process in the container."""
    with suppress(psutil.NoSuchProcess):
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:  # listed before any dies and is re-parented
            with suppress(psutil.NoSuchProcess):
                proc.send_signal(sig)


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
        assert self.service is not None
        signal_tree(self.service.proc.pid, sig)

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
        # Two warm kernels: both sessions of a case move at once when their owner fails.
        args = ["--pool-size", "2", "--preload-modules", "[]", "--lease-ttl", str(LEASE_TTL),
                "--redis-wait-replicas", "1", *(replica_args or [])]  # fmt: skip
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


def run_case(rig: Rig, name: str, fault: Fault, after: int = 3, via: Sequence[Target] = ()) -> CaseResult:
    """Counter clients (REST and WebSocket) run on fresh sessions owned by A; ``fault`` strikes; then both
    must make ``after`` more acknowledged cells, and the committed state must satisfy the invariants.

    The clients alternate between both replicas, or use only ``via`` (B alone measures how soon a healthy
    replica serves the sessions of a failed one, without the waits of a client stuck on the failed one)."""
    rest_session, ws_session = new_counter_sessions(rig.a)
    targets = list(via) or rig.replicas
    clients: dict[str, CounterClient] = {
        "rest": RestCounter(targets, rest_session),
        "ws": WsCounter(targets, ws_session),
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
