"""PNG plots from a report folder's raw data (results.json, the locust samples, the resource samples)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from loadtests.compare.fmt import HEAD, present
from loadtests.compare.locust_run import Row, read_samples
from loadtests.users.arrivals import make_daily

Json = dict[str, Any]
COLORS = {"dedicated": "tab:red", "peruser": "tab:orange", "gateway": "tab:blue"}


def _rows(folder: Path, key: str) -> list[Row]:
    return read_samples(folder / f"locust_{key}_samples.csv")[1]


def _resources(folder: Path, key: str) -> list[dict[str, float]]:
    path = folder / f"resources_{key}.csv"
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [{k: float(v) for k, v in rec.items()} for rec in csv.DictReader(f)]


def latency_distribution(folder: Path, results: Json) -> str:
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in present(results):
        load = results["models"][key].get("load") or {}
        t0, t1 = (load.get("phases") or {}).get("steady", (0, 0))
        start = load.get("started", 0)
        values = sorted(
            r.ms for r in _rows(folder, key) if r.name == "warm execute" and r.ok and start + t0 <= r.t < start + t1
        )
        if values:
            ax.plot(values, [(i + 1) / len(values) for i in range(len(values))], label=HEAD[key], color=COLORS[key])
    ax.set_xscale("log")
    ax.set_xlabel("warm cell latency at steady load, ms (log)")
    ax.set_ylabel("share of cells at or below")
    ax.set_title("Warm latency distribution (steady phase)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, folder, "latency_distribution.png")


def latency_over_time(folder: Path, results: Json) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, phase in zip(axes, ("ramp", "burst"), strict=True):
        for key in present(results):
            load = results["models"][key].get("load") or {}
            window = (load.get("phases") or {}).get(phase)
            if not window:
                continue
            start = load["started"] + window[0]
            end = load["started"] + window[1]
            rows = [r for r in _rows(folder, key) if start <= r.t < end and r.ok]
            for name, marker in (("warm execute", "."), ("first result", "x")):
                pts = [(r.t - start, r.ms) for r in rows if r.name == name]
                if pts:
                    ax.scatter(
                        *zip(*pts, strict=True),
                        s=10 if marker == "." else 30,
                        marker=marker,
                        alpha=0.6,
                        color=COLORS[key],
                        label=f"{HEAD[key]}: {name}",
                    )
        ax.set_yscale("log")
        ax.set_title(f"during the {phase}")
        ax.set_xlabel(f"seconds since the {phase} began")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("latency, ms (log)")
    axes[1].legend(fontsize=6, loc="upper right")
    return _save(fig, folder, "latency_over_time.png")


def memory_vs_users(folder: Path, results: Json) -> str:
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in present(results):
        idle = results["models"][key].get("idle") or {}
        pts = [(0, idle["no_users"]["pss_mb"])] if idle.get("no_users") else []
        pts += sorted((int(n), v["pss_mb"]) for n, v in (idle.get("levels") or {}).items())
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", color=COLORS[key], label=f"{HEAD[key]}: idle users")
        after = idle.get("after_idle_action")
        if after and pts:
            ax.scatter(
                [pts[-1][0]],
                [after["pss_mb"]],
                marker="v",
                s=60,
                color=COLORS[key],
                label=f"{HEAD[key]}: after the idle action",
            )
    ax.set_xlabel("idle users (each holding a kernel with state)")
    ax.set_ylabel("memory of the model's processes, MB (PSS)")
    ax.set_title("Idle memory against users")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, folder, "memory_vs_users.png")


def trace(folder: Path, results: Json) -> str:
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    for key in present(results):
        load = results["models"][key].get("load") or {}
        window = (load.get("phases") or {}).get("trace")
        if not window:
            continue
        start = load["started"] + window[0]
        res = [r for r in _resources(folder, key) if start <= r["t"] <= load["started"] + window[1]]
        if res:
            xs = [r["t"] - start for r in res]
            top.step(xs, [r["servers"] for r in res], where="post", color=COLORS[key], label=HEAD[key])
            bottom.plot(xs, [r["pss_mb"] for r in res], color=COLORS[key], label=HEAD[key])
    plan = results.get("plan") or {}
    if plan.get("hour"):
        starts, users = _day_users(plan)
        top.step(
            starts,
            users,
            where="post",
            color="gray",
            linestyle=":",
            label="users on",
        )
    top.set_ylabel("servers / replicas up")
    top.set_title("The daily trace (compressed; the night more so): units up, and memory")
    top.legend(fontsize=7)
    bottom.set_ylabel("memory, MB (PSS)")
    bottom.set_xlabel("seconds into the trace")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    return _save(fig, folder, "trace.png")


def _day_users(plan: Json) -> tuple[list[float], list[int]]:
    """When each compressed hour starts in the trace, and how many users are on in it."""
    stages = make_daily(
        plan["day_peak"],
        plan["hour"],
        tuple(plan["day"]),
        plan["day_first_hour"],
        plan["day_hours"],
        plan.get("night_hour"),  # (absent from runs before the night was compressed further)
    )
    return [s.start for s in stages], [s.users for s in stages]


def _save(fig: Any, folder: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(folder / name, dpi=90)
    plt.close(fig)
    return name


def make_plots(folder: Path, results: Json) -> list[str]:
    return [f(folder, results) for f in (latency_distribution, latency_over_time, memory_vs_users, trace)]
