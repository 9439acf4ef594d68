"""Measured unavailability under faults, and what --redis-wait-replicas costs: prints JSON.

    python -m tests.fault_bench [--rounds 3] [--out result.json]

Runs every case of tests/fault_rig.py (the fault suite's rig: two replicas, Redis master + replica, lease TTL
3 s) a few times, each with two clients: one alternating between both replicas (as a round-robin balancer
would send them), and one that only uses the healthy replica B (how soon a live replica serves the sessions
of a failed one). Unavailability is the longest wait between two acknowledged cells around the fault. Then the
latency of a fenced commit, and of a REST cell, with and without WAIT for one Redis replica. Records what it ran
against (commit, machine, Redis version). Not a test: the fault suite asserts the invariants, this measures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from notebook_state.store import Commit, RedisStore, SessionRecord
from tests.counter_clients import CELL, HEADERS, INIT, TOKEN, RestCounter, final_state, rest, verdict, wait_until
from tests.fault_rig import CASES, LEASE_TTL, SIGNING_KEY, run_case, running_rig
from tests.redis_cluster import redis_cluster
from tests.redis_server import RedisServer, redis_server_binary
from tests.service import start_service


def describe() -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "kernel_gateway", "notebook_state"],
                           capture_output=True, text=True)  # fmt: skip
    version = subprocess.run([redis_server_binary(), "--version"], capture_output=True, text=True).stdout.split()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    return {
        "commit": commit.stdout.strip(),
        "uncommitted_changes": bool(dirty.stdout.strip()),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "redis": next((v.split("=", 1)[1] for v in version if v.startswith("v=")), "?"),
        "lease_ttl": LEASE_TTL,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def percentiles(times: list[float]) -> dict[str, float]:
    times = sorted(times)
    return {"p50_ms": round(statistics.median(times), 3), "p95_ms": round(times[int(len(times) * 0.95) - 1], 3)}


async def commit_latency(url: str, commits: int) -> dict[str, dict[str, float]]:
    """Milliseconds per fenced commit of a small checkpoint, without and with WAIT 1, interleaved."""
    stores = {wait: RedisStore(url, session_ttl=600, wait_replicas=wait) for wait in (0, 1)}
    times: dict[int, list[float]] = {0: [], 1: []}
    try:
        held = {}
        for wait, store in stores.items():
            record = SessionRecord(id=f"bench-{wait}-{os.getpid()}", kernel_name="python3", created=time.time())
            await store.create(record)
            fence = await store.acquire(record.id, "bench", "http://bench", ttl=600)
            assert fence is not None
            held[wait] = (record, fence)
        for i in range(commits):
            for wait, store in stores.items():
                record, fence = held[wait]
                commit = Commit(b"{}", "sig", {f"g:{i}": b"x" * 512}, keep=[], drop=[f"g:{i - 1}"] if i else [],
                                record=record)  # fmt: skip
                started = time.perf_counter()
                await store.commit(record.id, fence, commit, ttl=600)
                times[wait].append((time.perf_counter() - started) * 1000)
    finally:
        for store in stores.values():
            await store.close()
    return {f"wait_replicas_{w}": percentiles(t) for w, t in times.items()}


def cell_latency(urls: dict[int, str], cells: int) -> dict[str, dict[str, float]]:
    """Milliseconds per REST counter cell (commit included) on replicas with and without WAIT 1, interleaved
    cell by cell so that both see the same load."""
    sessions = {wait: rest(_Url(url), INIT)["session"] for wait, url in urls.items()}  # each owned where created
    times: dict[int, list[float]] = {wait: [] for wait in urls}
    with httpx.Client(headers=HEADERS, timeout=60) as client:
        for i in range(cells):
            for wait, url in urls.items():
                started = time.perf_counter()
                r = client.post(f"{url}/execute", json={"session": sessions[wait], "code": CELL.format(i=i)})
                times[wait].append((time.perf_counter() - started) * 1000)
                assert r.status_code == 200 and r.json()["checkpoint"]["status"] == "committed", r.text
    return {f"wait_replicas_{w}": percentiles(t) for w, t in times.items()}


def wait_cost(directory: Path, cells: int) -> dict[str, Any]:
    master = RedisServer(directory / "redis-1", persistent=True)
    standby = RedisServer(directory / "redis-2", persistent=True, extra=["--replicaof", "127.0.0.1", str(master.port)])
    services = {}
    try:
        master.start()
        standby.start()
        env = {"SKG_REDIS_URL": master.url, "SKG_SIGNING_KEY": SIGNING_KEY}
        for wait in (0, 1):
            args = ["--pool-size", "1", "--redis-wait-replicas", str(wait)]
            services[wait] = start_service(directory / f"skg{wait}", args, token=TOKEN, env=env)
        return {
            "store_commit": asyncio.run(commit_latency(master.url, cells * 5)),
            "rest_cell": cell_latency({w: s.url for w, s in services.items()}, cells),
        }
    finally:
        for service in services.values():
            service.stop()
        standby.stop()
        master.stop()


def cluster_failover(directory: Path, rounds: int) -> list[dict[str, Any]]:
    """A Redis Cluster (3 masters + 3 replicas) loses the master of a session's slot mid-session; it is back
    (as a replica) once a replica was promoted. The longest wait between acknowledged REST cells, per round."""
    found = []
    for round_ in range(rounds):
        found.append({"round": round_, **one_cluster_failover(directory / f"round{round_}")})
        print(f"cluster failover: {found[-1]}", file=sys.stderr, flush=True)
    return found


def one_cluster_failover(directory: Path) -> dict[str, Any]:
    with redis_cluster(directory / "cluster") as cluster, ExitStack() as stack:
        env = {"SKG_REDIS_URL": cluster.url, "SKG_SIGNING_KEY": SIGNING_KEY}
        args = ["--pool-size", "1", "--lease-ttl", str(LEASE_TTL), "--redis-wait-replicas", "1"]
        targets = []
        for name in ("a", "b"):
            service = start_service(directory / name, args, token=TOKEN, env=env)
            stack.callback(service.stop)
            targets.append(_Url(service.url))
        session = rest(targets[0], INIT)["session"]
        client = RestCounter(targets, session)
        client.start()
        try:
            wait_until(lambda: len(client.ledger.acked) >= 3, "cells are acknowledged")
            key = f"skg:{{{session}}}:meta"
            master = cluster.master_port_of(key)
            struck = time.monotonic()
            cluster.kill(master)
            wait_until(lambda: cluster.master_port_of(key) != master, "a replica is promoted")
            promoted = time.monotonic()
            cluster.restart(master)
            wait_until(lambda: client.ledger.acks_after(struck) >= 3, "cells are acknowledged again")
        finally:
            client.stopping.set()
            client.join(60)
        n, log = final_state(targets, session)
        return {
            "unavailable_s": round(client.ledger.longest_gap(struck), 3),
            "promotion_s": round(promoted - struck, 3),
            "outcomes": dict(client.ledger.outcomes),
            "problems": verdict(client.ledger, n, log),
        }


class _Url:
    def __init__(self, url: str) -> None:
        self.name, self.url = url, url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="runs of every fault case")
    parser.add_argument("--cells", type=int, default=200, help="cells timed for the WAIT cost")
    parser.add_argument("--cluster-rounds", type=int, default=3, help="runs of the Redis Cluster failover")
    parser.add_argument("--only", choices=["wait", "faults", "cluster"], help="run only this part")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"ran_against": describe(), "cases": [], "wait_cost": {}}
    with tempfile.TemporaryDirectory(prefix="skg-faults-") as tmp:
        if args.only in (None, "wait"):
            result["wait_cost"] = wait_cost(Path(tmp) / "wait", args.cells)
        if args.only in (None, "cluster"):
            result["cluster_failover"] = cluster_failover(Path(tmp) / "cluster", args.cluster_rounds)
        for round_ in range(args.rounds if args.only in (None, "faults") else 0):
            with running_rig(Path(tmp) / f"round{round_}") as rig:
                for name, make in CASES:
                    for via in ("both", "b"):
                        case = run_case(rig, name, make(rig), via=[rig.b] if via == "b" else ())
                        print(f"{name} via {via}: {case.unavailable}", file=sys.stderr, flush=True)
                        result["cases"].append({"name": name, "via": via, "round": round_,
                                                "unavailable_s": case.unavailable, "outcomes": case.outcomes,
                                                "problems": case.problems})  # fmt: skip
    summary: dict[str, list[float]] = {}
    for case in result["cases"]:
        for face, seconds in case["unavailable_s"].items():
            summary.setdefault(f"{case['name']} | via {case['via']} | {face}", []).append(seconds)
    result["ran_against"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["summary_s"] = {k: {"median": statistics.median(v), "max": max(v)} for k, v in summary.items()}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
