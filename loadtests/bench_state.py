"""The state benchmark: what checkpointing every cell costs, and how fast and how completely a session comes
back on another replica after its owner was killed.

One run starts everything it measures (a throwaway redis-server and ``skg serve`` replicas, all on 127.0.0.1)
and stops all of it again, also on error:

(a) latency that checkpointing adds to a trivial cell (``x = x + 1``) when the namespace also holds an
    unchanged ~100 MB pandas DataFrame: ``POST /execute`` on a warm session of a replica with checkpointing on
    (Redis store) against the same on a replica started with ``--no-checkpoint``; both run at the same time,
    measured in interleaved blocks (ABBA order) so that background load hits both alike;
(b) bytes written for that cell: the reply's ``checkpoint.written_bytes`` and, independently, the growth of
    Redis' ``INFO stats`` ``total_net_input_bytes`` per cell (protocol overhead and lease renewals included);
(c) failover: ``POST /execute`` on replica B for a session whose owner A was SIGKILLed just before, with ~1 MB
    and ~100 MB of state (fresh session and fresh A each time); wall time and the reply's ``restored.seconds``;
(d) a corpus of notebook state (arrays and views, DataFrames with a shared column, a fitted scikit-learn model,
    functions, lambdas, notebook classes and their instances, a closure, nested containers with aliases and a
    cycle, module aliases, an open file, a generator, a lock, a sqlite3 connection, random states) built on A,
    A killed with SIGKILL, restored on B: the share of variables back, what was lost and why, and whether
    values and aliasing survived (expressions such as ``c is a`` evaluated on A before and on B after).

It prints one JSON document on stdout (progress goes to stderr) and writes it to
``loadtests/results/bench_state.json``. Run as ``python -m loadtests.bench_state [--runs N] [--quick]``.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import datetime as dt
import json
import os
import platform
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis

from loadtests.common import (
    HOST,
    BenchError,
    ManagedProcess,
    cpu_model,
    free_port,
    git_commit,
    log,
    package_version,
    percentile,
    redis_server_binary,
    sigterm_as_exit,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_OUTPUT = HERE / "results" / "bench_state.json"
CELL = "x = x + 1"

STARTUP_TIMEOUT = 120.0  # a replica to listen and fill its pool
REQUEST_TIMEOUT = 300.0  # one execute (a 100 MB first checkpoint or restore included)
PHASE_A_TIME_LIMIT = 1200.0  # the interleaved latency loop, whatever --runs says
WARMUP_RUNS = 20
LEASE_TTL = 15.0  # the service's default: a takeover that waited for it would stand out
MB = 1024 * 1024

TARGETS = {
    "checkpoint_p50_overhead_ms": 2.0,
    "bytes_per_cell": 64 * 1024,
    "failover_1mb_p50_s": 0.150,
    "failover_100mb_p50_s": 0.600,
    "corpus_restored_share": 0.98,
}

Json = dict[str, Any]


def progress(message: str) -> None:
    log("bench_state", message)


# -- statistics --------------------------------------------------------------------------------------------


def stats(values: Sequence[float], scale: float = 1.0, digits: int = 3) -> Json:
    """n, mean, min, p50, p90, p99, max of ``values * scale``."""
    v = sorted(x * scale for x in values)
    if not v:
        return {"n": 0}
    return {
        "n": len(v),
        "mean": round(sum(v) / len(v), digits),
        "min": round(v[0], digits),
        "p50": round(percentile(v, 0.50), digits),
        "p90": round(percentile(v, 0.90), digits),
        "p99": round(percentile(v, 0.99), digits),
        "max": round(v[-1], digits),
    }


# -- processes ---------------------------------------------------------------------------------------------


class Redis:
    """A throwaway redis-server on a free loopback port, nothing persisted."""

    def __init__(self, directory: Path) -> None:
        self.binary = redis_server_binary()
        self.port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        cmd = [self.binary, "--port", str(self.port), "--bind", HOST, "--dir", str(directory), "--save", "",
               "--appendonly", "no", "--protected-mode", "yes"]  # fmt: skip
        self.proc = ManagedProcess.start("redis-server", cmd, dict(os.environ), REPO, tag="bench_state")
        self.client = redis.Redis(host=HOST, port=self.port, socket_connect_timeout=1, socket_timeout=30)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.ConnectionError):
                if self.client.ping():
                    return
            if not self.proc.alive():
                break
            time.sleep(0.05)
        self.proc.stop()
        raise BenchError(f"redis-server did not start:\n{self.proc.tail()}")

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def net_input_bytes(self) -> int:
        info: dict[str, Any] = self.client.info("stats")
        return int(info["total_net_input_bytes"])

    def version(self) -> str | None:
        with contextlib.suppress(redis.RedisError):
            server: dict[str, Any] = self.client.info("server")
            return str(server.get("redis_version"))
        return None

    def stop(self) -> None:
        with contextlib.suppress(redis.RedisError):
            self.client.close()
        self.proc.stop(10)


# -- replicas ----------------------------------------------------------------------------------------------


@dataclass
class Replica:
    name: str
    process: ManagedProcess
    url: str
    token: str
    client: httpx.Client

    def close(self) -> None:
        self.client.close()
        self.process.stop()


class ExecuteError(BenchError):
    pass


def start_replica(name: str, base: Path, redis_url: str, signing_key: str, token: str, *args: str) -> Replica:
    # The corpus's files live in a directory both replicas' kernels see (sandboxed kernels have a /tmp of their
    # own): a file handle replayed on replica B opens the file replica A's kernel wrote.
    shared = base / "corpus-files"
    shared.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "kernel_gateway", "--port", "0", "--host", HOST, "--data-dir", str(base / name),
           "--token", token, "--pool-size", "1", "--lease-ttl", str(LEASE_TTL), "--evict-idle-after", "0",
           "--sandbox-bind", json.dumps([str(shared)]), *args]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "SKG_REDIS_URL": redis_url,
        "SKG_SIGNING_KEY": signing_key,
    }
    process = ManagedProcess.start(name, cmd, env, REPO, tag="bench_state")
    try:
        if not process.listening.wait(STARTUP_TIMEOUT) or process.url is None:
            raise BenchError(f"{name} did not start listening:\n{process.tail()}")
        client = httpx.Client(
            base_url=process.url, headers={"Authorization": f"token {token}"}, timeout=REQUEST_TIMEOUT
        )
        replica = Replica(name, process, process.url, token, client)
        wait_pool_full(replica)
    except BaseException:
        process.stop()
        raise
    progress(f"{name} ready at {process.url} (pid {process.pid})")
    return replica


def wait_pool_full(replica: Replica, timeout: float = STARTUP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    body: Json = {}
    while time.monotonic() < deadline:
        if not replica.process.alive():
            raise BenchError(f"{replica.name} exited:\n{replica.process.tail()}")
        with contextlib.suppress(httpx.HTTPError, ValueError):
            body = replica.client.get("/readyz", timeout=5).json()
            if body.get("pool_ready", 0) >= body.get("pool_size", 1):
                return
        time.sleep(0.05)
    raise BenchError(f"{replica.name}: warm pool not full within {timeout:g} s (last /readyz: {body})")


def execute(replica: Replica, code: str, session: str | None = None) -> tuple[float, Json]:
    """``POST /execute``; (wall seconds, reply). Raises unless HTTP 200 and status ok."""
    body: Json = {"code": code}
    if session is not None:
        body["session"] = session
    started = time.perf_counter()
    response = replica.client.post("/execute", json=body)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise ExecuteError(f"{replica.name}: POST /execute HTTP {response.status_code}: {response.text[:1000]}")
    reply: Json = response.json()
    if reply.get("status") != "ok":
        raise ExecuteError(f"{replica.name}: cell {code[:80]!r} failed: {json.dumps(reply)[:2000]}")
    return elapsed, reply


def result_text(reply: Json) -> str:
    results = [o for o in reply.get("outputs", []) if o.get("output_type") == "execute_result"]
    if not results:
        raise BenchError(f"no execute_result in {json.dumps(reply)[:1000]}")
    text: str = results[-1]["data"]["text/plain"]
    return text


def result_value(reply: Json) -> Any:
    return ast.literal_eval(result_text(reply))


def delete_session(replica: Replica, session: str) -> None:
    with contextlib.suppress(httpx.HTTPError):
        replica.client.delete(f"/sessions/{session}", timeout=60)


# -- configuration and environment -------------------------------------------------------------------------


@dataclass
class Config:
    runs: int
    quick: bool
    block: int
    df_rows: int  # float64 rows of the (a)/(b) DataFrame
    failover_sizes: dict[str, int]  # label -> bytes of state
    failover_reps: int
    output: Path


def parse_args(argv: Sequence[str]) -> Config:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_state", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=None, help="timed cells per variant in (a) (default 300)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 10 MB state, 30 runs, 2 failovers")
    parser.add_argument("--failover-reps", type=int, default=None, help="failovers per state size (default 5)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="where the JSON goes")
    ns = parser.parse_args(list(argv))
    runs = ns.runs if ns.runs is not None else (30 if ns.quick else 300)
    if runs < 1:
        parser.error("--runs must be at least 1")
    big = 10 * MB if ns.quick else 100 * MB
    return Config(
        runs=runs,
        quick=ns.quick,
        block=10 if ns.quick else 25,
        df_rows=big // 8,
        failover_sizes={"1MB": 1 * MB, f"{big // MB}MB": big},
        failover_reps=max(1, ns.failover_reps if ns.failover_reps is not None else (2 if ns.quick else 5)),
        output=ns.output,
    )


def environment(redis_srv: Redis | None) -> Json:
    version = package_version
    commit = git_commit(REPO)
    redis_binary = None
    redis_version = redis_srv.version() if redis_srv else None
    with contextlib.suppress(BenchError):
        redis_binary = redis_server_binary()
    return {
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "serverless_kernel_gateway": version("serverless-kernel-gateway"),
        "git_commit": commit,
        "pandas": version("pandas"),
        "numpy": version("numpy"),
        "scikit_learn": version("scikit-learn"),
        "cloudpickle": version("cloudpickle"),
        "xxhash": version("xxhash"),
        "redis_py": version("redis"),
        "hiredis": version("hiredis"),
        "ipykernel": version("ipykernel"),
        "redis_server": redis_version,
        "redis_server_binary": redis_binary,
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


# -- the benchmark -----------------------------------------------------------------------------------------


def dataframe_code(rows: int) -> str:
    return (
        "import numpy as np\nimport pandas as pd\n"
        f"df = pd.DataFrame({{'v': np.random.default_rng(0).random({rows})}})\n"
        "x = 0\nint(df.memory_usage().sum())"
    )


# Kernel-side timing, installed only after the timed runs: wraps the tracker's hooks on the instance, so the
# next cells' pre_run_cell / post_run_cell (which includes writing the checkpoint) are timed inside the kernel.
INSTRUMENT = """
import time as _skg_time
_skg_tr = get_ipython()._notebook_state_tracker
_skg_t = {'pre': [], 'post': [], 'checkpoint': []}
def _skg_wrap(_name, _fn):
    def _w(*a, **k):
        _s = _skg_time.perf_counter()
        try:
            return _fn(*a, **k)
        finally:
            _skg_t[_name].append(_skg_time.perf_counter() - _s)
    return _w
_skg_tr.checkpoint = _skg_wrap('checkpoint', _skg_tr.checkpoint)
for _ev, _nm in (('pre_run_cell', 'pre'), ('post_run_cell', 'post')):
    _old = getattr(_skg_tr, _ev)
    get_ipython().events.unregister(_ev, _old)
    _new = _skg_wrap(_nm, _old)
    setattr(_skg_tr, _ev, _new)
    get_ipython().events.register(_ev, _new)
"""
INSTRUMENT_READ = "{k: [round(s * 1000, 4) for s in v] for k, v in _skg_t.items()}"


class Bench:
    def __init__(self, config: Config, workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.token = secrets.token_hex(16)
        self.signing_key = secrets.token_hex(32)
        self.redis: Redis | None = None
        self.replicas: list[Replica] = []
        self.b: Replica | None = None
        self.result: Json = {
            "benchmark": "bench_state",
            "config": {
                "runs": config.runs,
                "quick": config.quick,
                "block": config.block,
                "dataframe_bytes": config.df_rows * 8,
                "failover_sizes_bytes": config.failover_sizes,
                "failover_reps": config.failover_reps,
                "lease_ttl_s": LEASE_TTL,
                "pool_size": 1,
                "cell": CELL,
            },
            "errors": [],
        }

    # -- plumbing ----------------------------------------------------------------------------------------

    def replica(self, name: str, *args: str) -> Replica:
        assert self.redis is not None
        replica = start_replica(name, self.workdir, self.redis.url, self.signing_key, self.token, *args)
        self.replicas.append(replica)
        return replica

    def drop(self, replica: Replica) -> None:
        if replica in self.replicas:
            self.replicas.remove(replica)
        replica.close()

    def close(self) -> None:
        for replica in list(self.replicas):
            with contextlib.suppress(Exception):
                self.drop(replica)
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

    def phase(self, key: str, fn: Callable[[], Json]) -> None:
        progress(f"phase {key}")
        started = time.monotonic()
        try:
            self.result[key] = fn()
        except Exception as exc:
            progress(f"phase {key} failed: {exc}")
            self.result["errors"].append({"phase": key, "error": f"{type(exc).__name__}: {exc}"[:4000]})
            self.result.setdefault(key, {"error": f"{type(exc).__name__}: {exc}"[:4000]})
        self.result.setdefault("phase_seconds", {})[key] = round(time.monotonic() - started, 1)

    def run(self) -> Json:
        self.redis = Redis(self.workdir / "redis")
        self.result["environment"] = environment(self.redis)
        self.phase("checkpoint_overhead", self.overhead)
        self.phase("failover", self.failover)
        self.phase("state_corpus", self.corpus)
        self.result["targets"] = targets(self.result)
        self.result["environment"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        return self.result

    # -- (a) and (b) ------------------------------------------------------------------------------------

    def overhead(self) -> Json:
        with ThreadPoolExecutor(2) as pool:
            f_on = pool.submit(self.replica, "ckpt-on")
            f_off = pool.submit(self.replica, "ckpt-off", "--no-checkpoint")
            on, off = f_on.result(), f_off.result()
        try:
            return self._overhead(on, off)
        finally:
            self.drop(on)
            self.drop(off)

    def _overhead(self, on: Replica, off: Replica) -> Json:
        cfg = self.config
        assert self.redis is not None
        setup: Json = {}
        sessions: dict[str, str] = {}
        for replica in (on, off):
            seconds, reply = execute(replica, dataframe_code(cfg.df_rows))
            sessions[replica.name] = reply["session"]
            setup[replica.name] = {
                "dataframe_memory_usage_bytes": result_value(reply),
                "setup_cell_seconds": round(seconds, 3),
                "first_checkpoint": reply.get("checkpoint"),
            }
            progress(f"{replica.name}: DataFrame of {result_value(reply) / MB:.1f} MiB built in {seconds:.2f} s")
        first = setup[on.name]["first_checkpoint"] or {}
        if first.get("status") != "committed":
            raise BenchError(f"first checkpoint on {on.name} not committed: {first}")
        for replica in (on, off):
            for _ in range(WARMUP_RUNS):
                execute(replica, CELL, sessions[replica.name])
        times: dict[str, list[float]] = {on.name: [], off.name: []}
        block_p50: list[dict[str, float]] = []
        written: list[int] = []
        total: list[int] = []
        ckpt_seconds: list[float] = []
        statuses: dict[str, int] = {}
        redis_bytes = 0
        redis_cells = 0
        blocks = 0
        pair_count = 0
        paired: list[float] = []
        deadline = time.monotonic() + PHASE_A_TIME_LIMIT
        truncated = False
        while len(times[on.name]) < cfg.runs:
            if time.monotonic() > deadline:
                truncated = True
                progress("time limit reached: stopping the latency loop early")
                break
            n = min(cfg.block, cfg.runs - len(times[on.name]))
            this_block: dict[str, list[float]] = {on.name: [], off.name: []}
            before = self.redis.net_input_bytes()
            for i in range(n):
                # Pairs in ABBA order (on/off, off/on, ...): neither variant always goes first, and both see the
                # same moment's background load; the off replica sends Redis nothing (checked below).
                pair: dict[str, float] = {}
                for replica in (on, off) if (pair_count + i) % 2 == 0 else (off, on):
                    seconds, reply = execute(replica, CELL, sessions[replica.name])
                    pair[replica.name] = seconds
                    if replica is on:
                        ckpt = reply.get("checkpoint") or {}
                        statuses[str(ckpt.get("status"))] = statuses.get(str(ckpt.get("status")), 0) + 1
                        written.append(int(ckpt.get("written_bytes", 0)))
                        total.append(int(ckpt.get("total_bytes", 0)))
                        ckpt_seconds.append(float(ckpt.get("seconds", 0.0)))
                paired.append(pair[on.name] - pair[off.name])
                for name, seconds in pair.items():
                    this_block[name].append(seconds)
                    times[name].append(seconds)
            pair_count += n
            redis_bytes += self.redis.net_input_bytes() - before
            redis_cells += n
            block_p50.append({k: percentile(sorted(v), 0.5) * 1000 for k, v in this_block.items()})
            blocks += 1
            if blocks % 4 == 0:
                progress(f"(a) {len(times[on.name])}/{cfg.runs} runs per variant")
        # Check that the replica without checkpointing really sends Redis nothing per cell.
        before = self.redis.net_input_bytes()
        off_cells = 20
        for _ in range(off_cells):
            execute(off, CELL, sessions[off.name])
        off_bytes = self.redis.net_input_bytes() - before
        final = {r.name: result_value(execute(r, "x", sessions[r.name])[1]) for r in (on, off)}
        expected = {
            on.name: WARMUP_RUNS + len(times[on.name]),
            off.name: WARMUP_RUNS + len(times[off.name]) + off_cells,
        }
        # The INFO command that samples the counter is itself counted: measure its own size once.
        a = self.redis.net_input_bytes()
        info_cost = self.redis.net_input_bytes() - a
        on_stats = stats(times[on.name], 1000)
        off_stats = stats(times[off.name], 1000)
        diffs = sorted(b[on.name] - b[off.name] for b in block_p50)
        diagnostics = self._kernel_diagnostics(on, off, sessions)
        per_cell_redis = (redis_bytes - info_cost * blocks) / redis_cells if redis_cells else None
        self.result["checkpoint_bytes"] = {
            "reply_written_bytes": stats(written, 1, 1),
            "reply_total_bytes": stats(total, 1, 1),
            "redis_total_net_input_bytes_per_cell": round(per_cell_redis, 1) if per_cell_redis is not None else None,
            "redis_cells_measured": redis_cells,
            "redis_method": "INFO stats total_net_input_bytes sampled before and after each block of interleaved "
            "cells (the replica run with --no-checkpoint sends Redis nothing per cell: see "
            "redis_bytes_per_cell_of_the_no_checkpoint_replica); sum of deltas minus the INFO command's own "
            "bytes, divided by the checkpointed cells. Includes the "
            "RESP protocol overhead, the EVALSHA of the fenced commit, the manifest envelope and the session "
            "record, and any lease renewal (every lease_ttl/3 s) that fell inside a block.",
            "info_command_bytes": info_cost,
            "redis_bytes_per_cell_of_the_no_checkpoint_replica": round((off_bytes - info_cost) / off_cells, 1),
        }
        return {
            "method": f"{len(times[on.name])} timed POST /execute of {CELL!r} per variant over one keep-alive httpx "
            f"connection each, after {WARMUP_RUNS} warm-up cells each, interleaved request by request in pairs "
            "(ABBA order: on/off, off/on, ...) so that both variants see the same background load; "
            f"{blocks} blocks of up to {cfg.block} pairs. Both replicas and their sessions (each holding the same "
            "DataFrame) live for the whole phase, on the same redis-server; 'off' is started with "
            "--no-checkpoint. Wall time measured in this client. The machine is shared (2 cores, other agents' "
            "tests): p90/p99 are dominated by that noise; p50 and the median paired difference are the robust "
            "numbers. The target is judged on p50(on) - p50(off).",
            "setup": setup,
            "checkpoint_on_ms": on_stats,
            "checkpoint_off_ms": off_stats,
            "p50_overhead_ms": round(on_stats["p50"] - off_stats["p50"], 3),
            "p90_overhead_ms": round(on_stats["p90"] - off_stats["p90"], 3),
            "p99_overhead_ms": round(on_stats["p99"] - off_stats["p99"], 3),
            "paired_difference_ms": stats(paired, 1000),
            "per_block_p50_overhead_ms": {
                "n": len(diffs),
                "min": round(diffs[0], 3) if diffs else None,
                "median": round(percentile(diffs, 0.5), 3) if diffs else None,
                "max": round(diffs[-1], 3) if diffs else None,
            },
            "reply_checkpoint_seconds_ms": stats(ckpt_seconds, 1000),
            "checkpoint_statuses": statuses,
            "final_x": final,
            "final_x_expected": expected,
            "final_x_ok": final == expected,
            "truncated_by_time_limit": truncated,
            "kernel_diagnostics": diagnostics,
        }

    def _kernel_diagnostics(self, on: Replica, off: Replica, sessions: dict[str, str]) -> Json:
        """After the timed runs: where the checkpointing replica's extra time goes, per cell."""
        sid = sessions[on.name]
        execute(on, INSTRUMENT, sid)
        n = 30
        walls = []
        for _ in range(n):
            seconds, _ = execute(on, CELL, sid)
            walls.append(seconds)
        timings: dict[str, list[float]] = result_value(execute(on, INSTRUMENT_READ, sid)[1])
        # Skip the instrumenting cell's own post hook and the reading cell's pre hook: keep the n CELL runs.
        pre = timings["pre"][-n - 1 : -1] if len(timings["pre"]) > n else timings["pre"]
        post = timings["post"][1 : n + 1]  # [0] is the instrumenting cell's own post hook
        ckpt = timings["checkpoint"][1 : n + 1]
        # The same cell on the replica without checkpointing, right after, for a like-for-like wall time.
        off_walls = [execute(off, CELL, sessions[off.name])[0] for _ in range(n)]
        return {
            "method": "the checkpointing kernel's tracker hooks wrapped with perf_counter timers (installed only "
            f"after the timed runs), then {n} more cells on each replica",
            "kernel_pre_run_cell_ms": stats(pre),
            "kernel_post_run_cell_ms": stats(post),
            "kernel_checkpoint_write_ms": stats(ckpt),
            "wall_on_ms": stats(walls, 1000),
            "wall_off_ms": stats(off_walls, 1000),
        }

    # -- (c) ---------------------------------------------------------------------------------------------

    def failover(self) -> Json:
        cfg = self.config
        b = self.replica("replica-b")
        self.b = b
        out: Json = {
            "method": "per repetition: a fresh replica A (pool of 1) creates a session holding the state, "
            "its checkpoint commits, B's warm pool is full; A is SIGKILLed (the process only) and, once it "
            "is reaped, one POST /execute of a cheap expression on B is timed (B forwards to A, gets "
            "connection refused, steals the lease, restores from Redis, runs the cell); then the session is "
            f"deleted. Lease TTL {LEASE_TTL:g} s: a takeover that waited for the lease would take that long.",
            "sizes": {},
        }
        runs = [(label, size, False) for label, size in cfg.failover_sizes.items()]
        runs.append(("1MB_bytes_diagnostic", 1 * MB, True))
        for label, size, raw in runs:
            samples: list[Json] = []
            for rep in range(cfg.failover_reps):
                samples.append(self._one_failover(b, label, size, raw))
                progress(
                    f"(c) {label} #{rep + 1}: {samples[-1]['wall_s']:.3f} s (restore "
                    f"{samples[-1]['restored_seconds']:.3f} s)"
                )
            walls = [s["wall_s"] for s in samples]
            restored = [s["restored_seconds"] for s in samples]
            out["sizes"][label] = {
                "state_bytes": size,
                "state_kind": samples[0]["kind"],
                "wall_s": stats(walls, 1, 4),
                "restored_seconds": stats(restored, 1, 4),
                "outside_restore_p50_s": round(percentile(sorted(walls), 0.5) - percentile(sorted(restored), 0.5), 4),
                "values_ok": all(s["value_ok"] for s in samples),
                "lease_wait_suspected": any(s["wall_s"] > LEASE_TTL / 2 for s in samples),
                "runs": samples,
            }
        out["fresh_kernel_import_ms"] = self._import_costs(b)
        biggest = max(cfg.failover_sizes.values())
        out[f"restore_pieces_{biggest // MB}MB_s"] = restore_pieces(self.redis, biggest)
        took_over = sum("is gone; taking the session over" in line for line in b.process.log)
        out["b_log_takeover_messages"] = took_over
        out["lease_wait_suspected"] = any(v["lease_wait_suspected"] for v in out["sizes"].values())
        return out

    def _import_costs(self, b: Replica) -> Json:
        """What a fresh pool kernel pays to import the libraries an unpickle of the state needs."""
        out: Json = {}
        for module in ("numpy", "pandas", "sklearn.linear_model"):
            wait_pool_full(b)
            code = (
                f"import time as _t\n_a = _t.perf_counter()\nimport {module}\nround((_t.perf_counter() - _a) * 1000, 1)"
            )
            _, reply = execute(b, code)
            out[module] = result_value(reply)
            delete_session(b, reply["session"])
        return out

    def _one_failover(self, b: Replica, label: str, size: int, raw_bytes: bool = False) -> Json:
        a = self.replica(f"replica-a-{label}")
        sid = None
        try:
            n = size // 8
            if raw_bytes:
                kind = "bytes (restoring it imports nothing)"
                n = size
                code = f"state = __import__('os').urandom({size})"
                probe = "len(state)"
                check = "state[-8:].hex(), len(state)"
            elif size >= 50 * MB:
                kind = "pandas.DataFrame (one float64 column)"
                code = f"import numpy as np\nimport pandas as pd\nstate = pd.DataFrame({{'v': np.random.rand({n})}})"
                probe = "len(state)"
                check = "float(state['v'].iloc[-1]), int(state.memory_usage().sum())"
            else:
                kind = "numpy.ndarray (float64)"
                code = f"import numpy as np\nstate = np.random.rand({n})"
                probe = "len(state)"
                check = "float(state[-1]), int(state.nbytes)"
            _, reply = execute(a, code)
            sid = reply["session"]
            ckpt = reply.get("checkpoint") or {}
            if ckpt.get("status") != "committed":
                raise BenchError(f"checkpoint on A not committed: {ckpt}")
            expected = result_value(execute(a, check, sid)[1])
            wait_pool_full(b)
            a.process.kill9()
            wall, reply = execute(b, probe, sid)
            restored = reply.get("restored") or {}
            if not restored:
                raise BenchError(f"B did not restore (reply: {json.dumps(reply)[:1000]})")
            got = result_value(execute(b, check, sid)[1])
            return {
                "kind": kind,
                "wall_s": round(wall, 4),
                "restored_seconds": float(restored.get("seconds", 0.0)),
                "state_checkpoint_bytes": ckpt.get("total_bytes"),
                "probe_checkpoint_seconds": (reply.get("checkpoint") or {}).get("seconds"),
                "value_ok": got == expected and result_value(reply) == n,
                "lost": restored.get("lost"),
            }
        finally:
            if sid is not None:
                delete_session(b, sid)
            self.drop(a)

    # -- (d) ---------------------------------------------------------------------------------------------

    def corpus(self) -> Json:
        b = self.b or self.replica("replica-b")
        a = self.replica("replica-a-corpus")
        files = self.workdir / "corpus-files"
        files.mkdir(parents=True, exist_ok=True)
        sid = None
        try:
            sid = None
            for i, cell in enumerate(corpus_cells(files)):
                _, reply = execute(a, cell, sid)
                sid = reply["session"]
                ckpt = reply.get("checkpoint") or {}
                if ckpt.get("status") != "committed":
                    raise BenchError(f"corpus cell {i} checkpoint: {ckpt}")
            assert sid is not None
            last_ckpt = reply.get("checkpoint") or {}
            names_a: list[str] = result_value(execute(a, USER_NAMES, sid)[1])
            before = checks_of(execute(a, CHECKS_CELL, sid)[1])
            wait_pool_full(b)
            a.process.kill9()
            wall, reply = execute(b, CHECKS_CELL, sid)
            report: Json = reply.get("restored") or {}
            if not report:
                raise BenchError(f"B did not restore the corpus session: {json.dumps(reply)[:1000]}")
            after = checks_of(reply)
            names_b: list[str] = result_value(execute(b, USER_NAMES, sid)[1])
            return corpus_report(names_a, names_b, report, before, after, wall, last_ckpt)
        finally:
            if sid is not None:
                delete_session(b, sid)
            self.drop(a)
            shutil.rmtree(files, ignore_errors=True)


def restore_pieces(redis_srv: Redis | None, size: int) -> Json:
    """The size-proportional steps of a restore, each on its own in this process (same libraries and calls as
    the service and the kernel): Redis LRANGE of 8 MiB chunks and join, HMAC-SHA256, writing the blob to the
    scratch dir, and the kernel's read into a fresh bytearray (``load_blob``)."""
    import asyncio
    import hashlib
    import hmac

    import redis.asyncio as aioredis

    if redis_srv is None:
        return {}
    data = os.urandom(size)
    key = "bench-state:restore-pieces"
    chunk = 8 * MB
    redis_srv.client.delete(key)
    redis_srv.client.rpush(key, *[data[i : i + chunk] for i in range(0, size, chunk)])

    async def load() -> float:
        client = aioredis.Redis(host=HOST, port=redis_srv.port)
        try:
            started = time.perf_counter()
            chunks: list[Any] = await client.lrange(key, 0, -1)
            joined = b"".join(bytes(c) for c in chunks)
            elapsed = time.perf_counter() - started
        finally:
            await client.aclose()
        assert len(joined) == size
        return elapsed

    out: Json = {"redis_lrange_join": round(asyncio.run(load()), 4)}
    redis_srv.client.delete(key)
    started = time.perf_counter()
    hmac.new(b"k" * 32, data, hashlib.sha256).hexdigest()
    out["hmac_sha256_verify"] = round(time.perf_counter() - started, 4)
    scratch = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else Path(tempfile.gettempdir())
    path = scratch / f"bench-state-{os.getpid()}.bin"
    try:
        started = time.perf_counter()
        path.write_bytes(data)
        out["write_blob_to_scratch"] = round(time.perf_counter() - started, 4)
        started = time.perf_counter()
        with open(path, "rb") as f:
            bytearray(f.read())
        out["kernel_read_into_bytearray"] = round(time.perf_counter() - started, 4)
        started = time.perf_counter()
        buf = bytearray(size)
        with open(path, "rb") as f:
            f.readinto(buf)
        out["for_comparison_readinto_preallocated"] = round(time.perf_counter() - started, 4)
    finally:
        path.unlink(missing_ok=True)
    out["scratch_dir"] = str(scratch)
    return out


# -- the corpus --------------------------------------------------------------------------------------------

EXPECTED_VARS = {
    # name: what it is
    "np": "module alias (import numpy as np)",
    "pd": "module alias (import pandas as pd)",
    "random": "module",
    "threading": "module",
    "sqlite3": "module",
    "LogisticRegression": "library class (from sklearn.linear_model import ...)",
    "sqrt": "library builtin function (from math import sqrt)",
    "a": "numpy array",
    "b": "numpy view of a (a[10:20])",
    "c": "alias of a (c = a)",
    "m": "2-D numpy array",
    "obj_arr": "numpy object array holding a list that is also a variable",
    "df": "pandas DataFrame",
    "col": "df['u'] (a Series sharing df's data under copy-on-write)",
    "head": "df.iloc[:10] (a view of df)",
    "X": "features slice of m",
    "y": "labels",
    "model": "fitted sklearn LogisticRegression",
    "K": "int read by a notebook function",
    "scale": "notebook function reading a global",
    "sq": "lambda",
    "Point": "notebook class",
    "p": "instance of the notebook class",
    "pts": "list of instances (one is p)",
    "make_counter": "notebook function returning a closure",
    "counter": "closure over a nonlocal that was advanced twice",
    "shared": "list",
    "nest": "dict holding shared three times, a tuple of it and itself (cycle)",
    "big_nested": "dict holding a, df and model",
    "path": "str",
    "fh": "open text file, one line read",
    "first": "the line read",
    "gen": "generator, advanced once",
    "g0": "first value of gen",
    "lock": "threading.Lock",
    "held": "threading.Lock, acquired",
    "db_path": "str",
    "conn": "sqlite3 connection to a file database with committed rows",
    "rng": "numpy Generator, advanced",
    "prng": "random.Random, advanced",
}


def corpus_cells(files: Path) -> list[str]:
    return [
        "import numpy as np\nimport pandas as pd\nimport random\nimport threading\nimport sqlite3\n"
        "from sklearn.linear_model import LogisticRegression\nfrom math import sqrt",
        "a = np.arange(1_000, dtype=np.float64)\nb = a[10:20]\nc = a\n"
        "m = np.random.default_rng(1).random((200, 4))\n"
        "shared = [1, 2, 3]\nobj_arr = np.empty(2, dtype=object)\nobj_arr[0] = shared\nobj_arr[1] = 'x'",
        "df = pd.DataFrame({'u': np.arange(100.0), 'v': np.arange(100.0) * 2})\ncol = df['u']\nhead = df.iloc[:10]",
        "X = m[:, :3]\ny = (m[:, 3] > 0.5).astype(int)\nmodel = LogisticRegression().fit(X, y)",
        "K = 3\ndef scale(v):\n    return v * K\nsq = lambda v: v * v\n"
        "class Point:\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n"
        "    def norm2(self):\n        return self.x ** 2 + self.y ** 2\n"
        "p = Point(3, 4)\npts = [p, Point(1, 1)]\n"
        "def make_counter():\n    n = 0\n    def inc():\n        nonlocal n\n        n += 1\n        return n\n"
        "    return inc\ncounter = make_counter()\ncounter()\ncounter()",
        "nest = {'l': shared, 't': (shared, shared), 'd': {'again': shared}}\nnest['self'] = nest\n"
        "big_nested = {'arr': a, 'df': df, 'model': model}",
        f"path = {str(files / 'data.txt')!r}\ndb_path = {str(files / 'db.sqlite')!r}\n"
        "with open(path, 'w') as _f:\n    _f.write('line1\\nline2\\n')\n"
        "_c = sqlite3.connect(db_path)\n_c.execute('create table t (v int)')\n"
        "_c.execute('insert into t values (1), (2)')\n_c.commit()\n_c.close()\ndel _c, _f",
        "fh = open(path)\nfirst = fh.readline()\ngen = (i * i for i in range(10))\ng0 = next(gen)\n"
        "lock = threading.Lock()\nheld = threading.Lock()\nheld.acquire()\nconn = sqlite3.connect(db_path)\n"
        "rng = np.random.default_rng(42)\nrng.random(3)\nprng = random.Random(7)\nprng.random()\nNone",
    ]


USER_NAMES = (
    "sorted(n for n, v in list(get_ipython().user_ns.items()) if not n.startswith('_') and "
    "not (n in get_ipython().user_ns_hidden and get_ipython().user_ns_hidden[n] is v))"
)

# Non-mutating expressions: evaluated on A before the kill and on B after the restore; repr compared.
CHECKS: dict[str, tuple[str, list[str]]] = {
    # label: (expression, variables it is about)
    "c is a": ("c is a", ["a", "c"]),
    "b.base is a": ("b.base is a", ["a", "b"]),
    "np.shares_memory(a, b)": ("np.shares_memory(a, b)", ["a", "b"]),
    "b values": ("b.tolist()", ["b"]),
    "a sum": ("float(a.sum())", ["a"]),
    "m sum": ("round(float(m.sum()), 9)", ["m"]),
    "obj_arr[0] is shared": ("obj_arr[0] is shared", ["obj_arr", "shared"]),
    "df values": ("df.to_dict('list') == {'u': list(np.arange(100.0)), 'v': list(np.arange(100.0) * 2)}", ["df"]),
    "col shares df memory": ("np.shares_memory(col.to_numpy(), df['u'].to_numpy())", ["col", "df"]),
    "head shares df memory": ("np.shares_memory(head['u'].to_numpy(), df['u'].to_numpy())", ["head", "df"]),
    "head shape": ("head.shape", ["head"]),
    "X shares m memory": ("np.shares_memory(X, m)", ["X", "m"]),
    "model predictions": ("model.predict_proba(X[:3]).round(10).tolist()", ["model", "X"]),
    "model type": ("type(model).__name__", ["model"]),
    "model is LogisticRegression": ("isinstance(model, LogisticRegression)", ["model", "LogisticRegression"]),
    "scale(2)": ("scale(2)", ["scale", "K"]),
    "scale sees live K": ("scale.__globals__ is get_ipython().user_ns", ["scale"]),
    "sq(5)": ("sq(5)", ["sq"]),
    "p.norm2()": ("p.norm2()", ["p"]),
    "isinstance(p, Point)": ("isinstance(p, Point)", ["p", "Point"]),
    "pts[0] is p": ("pts[0] is p", ["pts", "p"]),
    "type(pts[1]) is Point": ("type(pts[1]) is Point", ["pts", "Point"]),
    "counter state": ("counter.__closure__[0].cell_contents", ["counter"]),
    "make_counter()() fresh": ("make_counter().__closure__[0].cell_contents", ["make_counter"]),
    "nest['l'] is shared": ("nest['l'] is shared", ["nest", "shared"]),
    "nest tuple aliases": ("nest['t'][0] is nest['t'][1] is nest['d']['again']", ["nest"]),
    "nest cycle": ("nest['self'] is nest", ["nest"]),
    "big_nested aliases": (
        "big_nested['arr'] is a and big_nested['df'] is df and big_nested['model'] is model",
        ["big_nested", "a", "df", "model"],
    ),
    "np module": ("np.__name__", ["np"]),
    "pd module": ("pd.__name__", ["pd"]),
    "sqrt(16.0)": ("sqrt(16.0)", ["sqrt"]),
    "first": ("first", ["first"]),
    "fh open": ("fh.closed", ["fh"]),
    "fh position": ("fh.tell()", ["fh"]),
    "g0": ("g0", ["g0"]),
    "gen is a generator": ("type(gen).__name__", ["gen"]),
    "gen position": ("gen.gi_frame.f_locals.get('i') if gen.gi_frame else 'exhausted'", ["gen"]),
    "lock unlocked": ("lock.locked()", ["lock"]),
    "held locked": ("held.locked()", ["held"]),
    "conn rows": ("conn.execute('select sum(v) from t').fetchone()[0]", ["conn"]),
    "rng state": ("rng.bit_generator.state['state']['state']", ["rng"]),
    "prng state": ("prng.getstate()[1][:4]", ["prng"]),
}

# Differences a restore is known to make (the README's "Known differences after a restore"): a mismatch of
# these checks is explained by the documentation, not by the restore report.
KNOWN_DIFFERENCES: dict[str, str] = {
    "b.base is a": "documented: a numpy view keeps sharing memory with its array, but its .base is the restore "
    "buffer, not the array (checked by 'np.shares_memory(a, b)')",
    "head shares df memory": "documented: a pandas row slice (df.iloc[:10]) comes back as a copy",
}

CHECKS_CELL = (
    "def _skg_checks(_checks):\n"
    "    import json as _json\n"
    "    _out = {}\n"
    "    for _label, _expr in _checks.items():\n"
    "        try:\n"
    "            _out[_label] = repr(eval(_expr, get_ipython().user_ns))\n"
    "        except Exception as _exc:\n"
    "            _out[_label] = 'ERROR ' + type(_exc).__name__ + ': ' + str(_exc)\n"
    "    return _json.dumps(_out)\n"
    f"_skg_checks({ {k: v[0] for k, v in CHECKS.items()}!r})"
)


def checks_of(reply: Json) -> dict[str, str]:
    value: str = result_value(reply)
    decoded: dict[str, str] = json.loads(value)
    return decoded


def corpus_report(
    names_a: list[str],
    names_b: list[str],
    report: Json,
    before: dict[str, str],
    after: dict[str, str],
    wall: float,
    last_ckpt: Json,
) -> Json:
    user = set(names_a)
    restored = set(report.get("restored", []))
    replayed = set(report.get("replayed", []))
    modules = set(report.get("modules", []))
    lost: dict[str, str] = dict(report.get("lost", {}))
    back = (restored | replayed | modules) & user
    silent = sorted(user - restored - replayed - modules - set(lost))
    missing_on_b = sorted(user - set(names_b))
    silent_missing = [n for n in missing_on_b if n not in lost]
    non_module = user - modules
    checks: Json = {}
    mismatched: list[str] = []
    for label, (expr, about) in CHECKS.items():
        same = before.get(label) == after.get(label)
        entry: Json = {"expr": expr, "on_a": before.get(label), "on_b": after.get(label), "equal": same}
        if not same:
            why = [n for n in about if n in replayed or n in lost]
            entry["explained_by"] = {n: ("replayed" if n in replayed else f"lost: {lost[n]}") for n in why}
            if not why and label in KNOWN_DIFFERENCES:
                entry["explained_by"] = {"known difference": KNOWN_DIFFERENCES[label]}
            mismatched.append(label)
        checks[label] = entry
    unexplained = [label for label in mismatched if not checks[label].get("explained_by")]
    return {
        "method": "the corpus is built on A in 8 cells (each checkpoint committed); the user variables are "
        "listed on A (the tracker's rule: not starting with '_', not IPython's own); A is SIGKILLed; the "
        "first POST /execute on B (restore + a cell evaluating the checks) is timed. Share = (restored + "
        "replayed + re-imported modules) / user variables; 'silently lost' = user variables in none of "
        "restored, replayed, modules, lost.",
        "user_variables": len(user),
        "user_variables_expected_by_bench": len(EXPECTED_VARS),
        "unexpected_variables": sorted(user - set(EXPECTED_VARS)),
        "expected_but_absent_on_a": sorted(set(EXPECTED_VARS) - user),
        "restored": sorted(restored & user),
        "replayed": sorted(replayed & user),
        "modules": sorted(modules & user),
        "lost": lost,
        "silently_lost": silent,
        "missing_on_b": missing_on_b,
        "missing_on_b_not_reported": silent_missing,
        "restored_share": round(len(back) / len(user), 4) if user else None,
        "restored_share_excluding_modules": round(len((restored | replayed) & non_module) / len(non_module), 4)
        if non_module
        else None,
        "checks_total": len(CHECKS),
        "checks_equal": len(CHECKS) - len(mismatched),
        "checks_mismatched": mismatched,
        "checks_mismatched_unexplained": unexplained,
        "checks": checks,
        "first_request_on_b_s": round(wall, 4),
        "restored_seconds": report.get("seconds"),
        "checkpoint_bytes_total": last_ckpt.get("total_bytes"),
        "variable_kinds": EXPECTED_VARS,
    }


# -- targets -----------------------------------------------------------------------------------------------


def targets(result: Json) -> Json:
    out: Json = {}

    def target(name: str, value: float | None, limit: float, unit: str, note: str = "") -> None:
        out[name] = {
            "value": value,
            "limit": limit,
            "unit": unit,
            "pass": None if value is None else value <= limit,
            **({"note": note} if note else {}),
        }

    overhead = result.get("checkpoint_overhead", {})
    target(
        "a_checkpoint_p50_overhead_ms",
        overhead.get("p50_overhead_ms"),
        TARGETS["checkpoint_p50_overhead_ms"],
        "ms",
        "p50(checkpointing on) - p50(--no-checkpoint), trivial cell, 100 MB DataFrame in the namespace",
    )
    nbytes = result.get("checkpoint_bytes", {})
    written = nbytes.get("reply_written_bytes", {}).get("max")
    target("b_reply_written_bytes_max", written, TARGETS["bytes_per_cell"], "bytes", "checkpoint.written_bytes")
    target(
        "b_redis_net_input_bytes_per_cell",
        nbytes.get("redis_total_net_input_bytes_per_cell"),
        TARGETS["bytes_per_cell"],
        "bytes",
        "Redis INFO total_net_input_bytes delta / cells",
    )
    sizes = result.get("failover", {}).get("sizes", {})
    for label, limit in (("1MB", TARGETS["failover_1mb_p50_s"]), ("100MB", TARGETS["failover_100mb_p50_s"])):
        entry = sizes.get(label)
        value = entry["wall_s"].get("p50") if entry else None
        target(
            f"c_failover_{label}_p50_s",
            value,
            limit,
            "s",
            "POST /execute on B after A was SIGKILLed, to its result (p50)"
            + ("" if entry else f"; not measured (sizes run: {sorted(sizes)})"),
        )
        if entry:
            out[f"c_failover_{label}_p50_s"]["max"] = entry["wall_s"].get("max")
            out[f"c_failover_{label}_p50_s"]["max_within_limit"] = entry["wall_s"].get("max", 0) <= limit
    corpus = result.get("state_corpus", {})
    share = corpus.get("restored_share")
    silent = corpus.get("silently_lost")
    out["d_corpus_restored_share"] = {
        "value": share,
        "limit": TARGETS["corpus_restored_share"],
        "unit": "share (>=)",
        "pass": None if share is None else share >= TARGETS["corpus_restored_share"],
    }
    out["d_corpus_none_lost_silently"] = {
        "value": None if silent is None else len(silent) + len(corpus.get("missing_on_b_not_reported", [])),
        "limit": 0,
        "unit": "variables",
        "pass": None if silent is None else not silent and not corpus.get("missing_on_b_not_reported"),
    }
    out["d_corpus_checks_unexplained_mismatches"] = {
        "value": corpus.get("checks_mismatched_unexplained"),
        "limit": [],
        "pass": None if "checks_mismatched_unexplained" not in corpus else not corpus["checks_mismatched_unexplained"],
    }
    out["all_pass"] = all(v.get("pass") is True for v in out.values() if isinstance(v, dict))
    return out


# -- entry point -------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    config = parse_args(sys.argv[1:] if argv is None else argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-state-"))
    bench = Bench(config, workdir)
    started = time.monotonic()
    try:
        with sigterm_as_exit():
            try:
                result = bench.run()
            finally:
                bench.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result["duration_s"] = round(time.monotonic() - started, 1)
    text = json.dumps(result, indent=2, default=str)
    config.output.parent.mkdir(parents=True, exist_ok=True)
    config.output.write_text(text + "\n")
    print(text)
    progress(f"wrote {config.output}")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
