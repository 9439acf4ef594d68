"""``skg-compare`` (or ``python -m loadtests.compare``): the three deployment models on this machine.

(a) dedicated: the real JupyterHub, a Jupyter server with local kernels per user, jupyterhub-idle-culler;
(b) per-user serverless: the same per-user server, stopped when idle and started on the next request (a
    stand-in for Knative's scale to zero);
(c) this project: gateway replicas behind nginx, one redis-server, idle eviction to Redis, replicas stopped
    when idle and started on the next request.
Each is driven by the same locust users (ramp, steady, burst, saturation, a compressed daily trace), probed
for cold and warm starts and measured idle at 1, 10 and 50 users. Writes a report folder: report.md, PNG
plots, results.json, the locust CSVs and HTML, and the resource samples. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

from loadtests.common import cpu_model, git_commit, log, package_version, sigterm_as_exit
from loadtests.compare.dedicated import DedicatedModel
from loadtests.compare.gateway import GatewayModel
from loadtests.compare.model import Model
from loadtests.compare.peruser import PerUserModel
from loadtests.compare.plan import Plan, make_plan
from loadtests.compare.plots import make_plots
from loadtests.compare.procs import REPO
from loadtests.compare.report import make_report
from loadtests.compare.runner import run_model

Json = dict[str, Any]
DEFAULT_OUT = REPO / "loadtests" / "results" / "compare"
ORDER = ("dedicated", "peruser", "gateway")
CAVEATS = [
    "One 2-core machine runs everything, load generator included: absolute figures are this machine's; "
    "compare the models as ratios within one run (the machine may be shared with other work).",
    "Model (b) and the scale to zero of model (c) are stand-ins for Knative (an activator in this driver), not "
    "Knative: no queue-proxy, no image pulls, no pod scheduling. Pod start on a cluster adds seconds to every "
    "cold start here (the study reports ~3.2 s for Knative).",
    "Model (a) spawns local processes, not pods: KubeSpawner's image pull and scheduling are not in its "
    "cold start. The idle culler runs with the same idle time as the other models' scale to zero, so the "
    "comparison is about what the idle action costs, not about how long each waits.",
    "Memory is PSS (shared pages divided among the processes sharing them); CPU is user + system time of the "
    "model's processes, read once a second (a process that exits loses at most its last second).",
    "The per-user serverless and dedicated models start kernels on demand; the gateway keeps a warm pool "
    "(2 per replica), which its memory figures include.",
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="skg-compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="a machinery check in under 2 minutes (tiny samples)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"report folder (default {DEFAULT_OUT})")
    p.add_argument("--models", default=",".join(ORDER), help="comma-separated subset of " + ",".join(ORDER))
    p.add_argument("--seed", type=int, default=None, help="seed of the users' cell mix")
    p.add_argument("--rebuild", action="store_true", help="only rebuild report.md and plots from --out's data")
    return p.parse_args(argv)


def environment() -> Json:
    versions = {n: package_version(n) or "?" for n in ("locust", "psutil", "matplotlib", "httpx", "websockets")}
    return {
        "commit": git_commit(REPO),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }


def make_model(key: str, plan: Plan, workdir: Path) -> Model:
    if key == "dedicated":
        return DedicatedModel(workdir=workdir)
    if key == "peruser":
        return PerUserModel(workdir=workdir, locust_users=plan.locust_identities, idle_users=max(plan.idle_levels))
    if key == "gateway":
        return GatewayModel(
            workdir=workdir, replicas=plan.replicas, pool_size=plan.pool_size, evict_idle_after=plan.evict_idle_after
        )
    raise SystemExit(f"unknown model {key!r}: choose from {', '.join(ORDER)}")


def build_report(out: Path, results: Json) -> None:
    plots = make_plots(out, results)
    (out / "report.md").write_text(make_report(results, plots))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out.resolve()
    if args.rebuild:
        build_report(out, json.loads((out / "results.json").read_text()))
        print(out / "report.md")
        return 0
    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    plan = make_plan(args.quick)
    seed = args.seed if args.seed is not None else random.randrange(1 << 20)
    out.mkdir(parents=True, exist_ok=True)
    results: Json = {
        "command": "skg-compare"
        + (" --quick" if args.quick else "")
        + ("" if keys == list(ORDER) else f" --models {args.models}"),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": args.quick,
        "seed": seed,
        "environment": environment(),
        "plan": plan.__dict__,
        "caveats": CAVEATS,
        "models": {},
    }
    began = time.monotonic()
    workroot = Path(tempfile.mkdtemp(prefix="skg-compare-"))
    failed = []
    try:
        with sigterm_as_exit():
            for i, key in enumerate(keys):
                elapsed = time.monotonic() - began
                eta = "" if not i else f", about {elapsed / i * (len(keys) - i):.0f} s to go"
                log("compare", f"model {i + 1}/{len(keys)}: {key} ({elapsed:.0f} s so far{eta})")
                model = run_model(make_model(key, plan, workroot / key), plan, out, seed)
                results["models"][key] = model
                for phase, error in (model.get("errors") or {}).items():  # the other phases and models still ran
                    failed.append(key)
                    results.setdefault("failed", {})[f"{key} ({phase})"] = error
                (out / "results.json").write_text(json.dumps(results, indent=1))
    finally:
        shutil.rmtree(workroot, ignore_errors=True)
    results["wall_s"] = round(time.monotonic() - began, 1)
    results["environment"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    (out / "results.json").write_text(json.dumps(results, indent=1))
    build_report(out, results)
    log("compare", f"done in {results['wall_s']:.0f} s: {out / 'report.md'}")
    print(out / "report.md")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
