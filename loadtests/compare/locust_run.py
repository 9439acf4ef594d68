"""One locust run as a subprocess (headless, CSV and HTML reports, per-request samples); never imported here."""

from __future__ import annotations

import contextlib
import csv
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil  # type: ignore[import-untyped]

from loadtests.common import BenchError, ManagedProcess, log
from loadtests.compare.model import LocustTarget
from loadtests.compare.plan import Plan
from loadtests.compare.procs import REPO, clean_env
from loadtests.users.arrivals import Stage, to_json

LOCUST = Path(sys.executable).parent / "locust"


@dataclass(frozen=True)
class Row:
    """One request event: end time (epoch seconds), type, name, milliseconds, ok, user identity, cell kind."""

    t: float
    type: str
    name: str
    ms: float
    ok: bool
    user: str
    kind: str
    error: str


@dataclass
class LocustRun:
    prefix: Path  # <prefix>_stats.csv, <prefix>.html, <prefix>_samples.csv
    started: float  # epoch seconds when the test (and its shape) started
    rows: list[Row]
    cpu_s: float  # the load generator's own CPU seconds


def read_samples(path: Path) -> tuple[float | None, list[Row]]:
    started, rows = None, []
    if not path.exists():
        return None, []
    with path.open(newline="") as f:
        for rec in csv.reader(f):
            if len(rec) < 8:
                continue
            if rec[1] == "RUN":
                started = float(rec[0])
                continue
            rows.append(Row(float(rec[0]), rec[1], rec[2], float(rec[3]), rec[4] == "1", rec[5], rec[6], rec[7]))
    return started, rows


def run_locust(target: LocustTarget, stages: list[Stage], prefix: Path, plan: Plan, seed: int) -> LocustRun:
    """Run the users on ``stages`` (a LoadTestShape reads them), bounded by the schedule plus a grace."""
    duration = stages[-1].end
    samples = Path(f"{prefix}_samples.csv")
    samples.unlink(missing_ok=True)
    files = ",".join(str(f) for f in [*target.files, target.files[0].parent / "shape.py"])
    env = clean_env(
        {
            **target.env,
            "SKG_LT_STAGES": to_json(stages),
            "SKG_LT_THINK": str(plan.think),
            "SKG_LT_SAMPLES": str(samples),
            "SKG_LT_SEED": str(seed),
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        }
    )
    cmd = [
        str(LOCUST),
        "-f",
        files,
        "--headless",
        "--host",
        target.host,
        "--csv",
        str(prefix),
        "--csv-full-history",
        "--html",
        f"{prefix}.html",
        "--only-summary",
        "--stop-timeout",
        f"{plan.stop_timeout:.0f}",
        "--loglevel",
        "WARNING",
        "--exit-code-on-error",
        "0",
    ]
    proc = ManagedProcess.start("locust", cmd, env, REPO, tag="compare")
    deadline = time.monotonic() + duration + 120
    cpu = 0.0
    while proc.alive() and time.monotonic() < deadline:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(proc.pid).cpu_times()
            cpu = t.user + t.system
        time.sleep(0.5)
    if proc.alive():
        log("compare", "locust overran its schedule: stopping it")
    proc.stop(timeout=20)
    (Path(f"{prefix}.log")).write_text(proc.tail(400))
    started, rows = read_samples(samples)
    if started is None:
        raise BenchError(f"locust did not start its test:\n{proc.tail()}")
    if proc.proc.returncode not in (0, None) and not rows:
        raise BenchError(f"locust failed ({proc.proc.returncode}):\n{proc.tail()}")
    return LocustRun(prefix, started, rows, cpu)
