"""What the kernel sandbox costs: kernel start and per-cell latency, sandboxed against not, in one run.

One replica per sandbox mode runs side by side; measurements alternate between them round by round, so a
busy machine slows every mode alike. A kernel start is ``POST /api/kernels`` with no warm pool (launch,
ready, capture module, preloads) then its deletion; a cell is ``POST /execute`` on one session, checkpoint
included. Prints one JSON object (stdout); progress goes to stderr.

    python -m loadtests.bench_sandbox --starts 10 --cells 200
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from .common import (
    BenchError,
    ManagedProcess,
    cpu_model,
    free_port,
    git_commit,
    log,
    package_version,
    percentile,
    sigterm_as_exit,
)

ROOT = Path(__file__).resolve().parent.parent
MODES = ("bwrap", "uid", "none")


def summary(values: list[float]) -> dict[str, float | int]:
    ordered = sorted(values)
    return {"n": len(ordered), "median": round(percentile(ordered, 0.5), 6), "p90": round(percentile(ordered, 0.9), 6),
            "min": round(ordered[0], 6)}  # fmt: skip


def start_replica(mode: str, work: Path) -> tuple[ManagedProcess, httpx.Client] | str:
    """A replica whose kernels run under ``mode``, or why it cannot run here."""
    cmd = [sys.executable, "-m", "kernel_gateway", "--port", str(free_port()), "--data-dir", str(work / mode),
           "--pool-size", "0", "--sandbox", mode, "--log-json"]  # fmt: skip
    proc = ManagedProcess.start(f"skg-{mode}", cmd, {**os.environ, "PYTHONUNBUFFERED": "1"}, ROOT, tag="sandbox")
    if not proc.listening.wait(120) or proc.url is None:
        proc.stop()
        return proc.tail(5).strip().splitlines()[-1] if proc.tail(5).strip() else "did not start"
    client = httpx.Client(base_url=proc.url, timeout=300)
    deadline = time.monotonic() + 120
    while True:
        try:
            ready = client.get("/readyz").json()
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                proc.stop()
                return "never answered /readyz"
            time.sleep(0.2)
    log("sandbox", f"{mode}: {ready['sandbox']['detail']}")
    return proc, client


def launch_costs(modes: list[str], runs: int) -> dict[str, Any]:
    """The sandbox's own share of a kernel start: this Python started (``-c pass``) behind each mode's launch
    prefix, alternating between modes, as the gateway would start a kernel (a directory of its own)."""
    import asyncio

    from kernel_gateway.kernels.sandbox import SandboxOptions, detect

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="skg-bench-launch-", dir="/dev/shm") as tmp:
        root = Path(tmp)
        root.chmod(0o711)
        prefixes: dict[str, list[str]] = {}
        for mode in modes:
            try:
                sandbox = asyncio.run(detect(SandboxOptions(mode=mode), root / f"probe-{mode}"))
            except RuntimeError as exc:
                out[mode] = {"unavailable": str(exc)}
                continue
            kernel_dir = root / mode
            kernel_dir.mkdir(mode=0o700)
            uid = sandbox.options.uid_base if sandbox.own_uid else None
            if uid is not None:
                os.chown(kernel_dir, uid, uid)
            prefixes[mode] = sandbox.prefix(kernel_dir, uid)
        seen: dict[str, list[float]] = {m: [] for m in prefixes}
        for _ in range(runs):
            for mode, prefix in prefixes.items():
                started = time.perf_counter()
                subprocess.run([*prefix, sys.executable, "-c", "pass"], check=True, cwd=tmp)
                seen[mode].append(time.perf_counter() - started)
        out.update({mode: summary(values) for mode, values in seen.items()})
    return out


def kernel_start(client: httpx.Client) -> float:
    started = time.perf_counter()
    r = client.post("/api/kernels", json={})
    elapsed = time.perf_counter() - started
    if r.status_code != 201:
        raise BenchError(f"kernel start failed: {r.status_code} {r.text}")
    client.delete(f"/api/kernels/{r.json()['id']}")
    return elapsed


def cell(client: httpx.Client, session: str, i: int) -> float:
    started = time.perf_counter()
    r = client.post("/execute", json={"session": session, "code": f"x = {i}"})
    elapsed = time.perf_counter() - started
    if r.status_code != 200 or r.json()["status"] != "ok":
        raise BenchError(f"cell failed: {r.status_code} {r.text[:200]}")
    return elapsed


def run(starts: int, cells: int, modes: list[str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    replicas: dict[str, tuple[ManagedProcess, httpx.Client]] = {}
    with tempfile.TemporaryDirectory(prefix="skg-bench-sandbox-") as tmp:
        try:
            for mode in modes:
                started = start_replica(mode, Path(tmp))
                if isinstance(started, str):
                    log("sandbox", f"{mode}: unavailable here: {started}")
                    results[mode] = {"unavailable": started}
                else:
                    replicas[mode] = started
            if not replicas:
                raise BenchError("no sandbox mode could run")
            timings: dict[str, dict[str, list[float]]] = {m: {"start": [], "cell": []} for m in replicas}
            for i in range(starts):  # round by round: every mode shares the machine's load alike
                for mode, (_, client) in replicas.items():
                    timings[mode]["start"].append(kernel_start(client))
                log("sandbox", f"kernel starts: {i + 1}/{starts}")
            sessions = {
                m: c.post("/execute", json={"code": "x = 0"}).json()["session"] for m, (_, c) in replicas.items()
            }
            for i in range(cells):
                for mode, (_, client) in replicas.items():
                    timings[mode]["cell"].append(cell(client, sessions[mode], i))
            for mode, seen in timings.items():
                results[mode] = {"kernel_start_s": summary(seen["start"]), "cell_s": summary(seen["cell"])}
        finally:
            for proc, client in replicas.values():
                client.close()
                proc.stop()
    overhead: dict[str, Any] = {}
    if "none" in replicas:
        base = results["none"]
        for mode in replicas:
            if mode != "none":
                overhead[mode] = {
                    "kernel_start_median_s": round(results[mode]["kernel_start_s"]["median"]
                                                   - base["kernel_start_s"]["median"], 6),
                    "cell_median_ms": round(1000 * (results[mode]["cell_s"]["median"] - base["cell_s"]["median"]), 3),
                    "cell_p90_ms": round(1000 * (results[mode]["cell_s"]["p90"] - base["cell_s"]["p90"]), 3),
                }  # fmt: skip
    return {"modes": results, "overhead_vs_none": overhead}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=10, help="cold kernel starts per mode")
    parser.add_argument("--cells", type=int, default=200, help="cells per mode, on one session")
    parser.add_argument("--modes", default=",".join(MODES), help="sandbox modes to compare (comma-separated)")
    parser.add_argument("--launches", type=int, default=30, help="bare process launches per mode")
    args = parser.parse_args(argv)
    bwrap = subprocess.run(["bwrap", "--version"], capture_output=True, text=True, check=False)
    modes = [m for m in args.modes.split(",") if m]
    with sigterm_as_exit():
        launch = launch_costs(modes, args.launches)
        report = run(args.starts, args.cells, modes)
    report["process_launch_s"] = launch
    report["ran"] = {
        "benchmark": "bench_sandbox", "starts": args.starts, "cells": args.cells, "commit": git_commit(ROOT),
        "cpu": cpu_model(), "cpus": os.cpu_count(), "bubblewrap": bwrap.stdout.strip() or None,
        "ipykernel": package_version("ipykernel"), "euid": os.geteuid(),
        "load_average": os.getloadavg(),
    }  # fmt: skip
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
