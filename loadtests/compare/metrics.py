"""Figures from raw data, as pure functions: request samples, phase windows and resource samples in, numbers out."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

from loadtests.common import percentile
from loadtests.compare.locust_run import Row
from loadtests.compare.sampler import Sample
from loadtests.users.arrivals import Stage, phase_windows

Json = dict[str, Any]


def spread(values: Sequence[float], digits: int = 1) -> Json:
    """n, p50, p90, p99, min and max of ``values`` (none: just n = 0)."""
    if not values:
        return {"n": 0}
    v = sorted(values)
    pick = {"p50": 0.5, "p90": 0.9, "p99": 0.99}
    out: Json = {"n": len(v), **{k: round(percentile(v, q), digits) for k, q in pick.items()}}
    out.update(min=round(v[0], digits), max=round(v[-1], digits))
    return out


def in_window(rows: Sequence[Row], t0: float, t1: float, name: str | None = None) -> list[Row]:
    return [r for r in rows if t0 <= r.t < t1 and (name is None or r.name == name)]


def latency(rows: Sequence[Row], t0: float, t1: float, name: str = "warm execute") -> Json:
    window = in_window(rows, t0, t1, name)
    out = spread([r.ms for r in window if r.ok])
    out["failed"] = sum(1 for r in window if not r.ok)
    return out


def absorb(rows: Sequence[Row], step_at: float, window_end: float, old_users: int, new_users: int) -> Json:
    """Time from the load step until every user it added had its first result (None if some never did)."""
    firsts: dict[str, float] = {}
    for r in in_window(rows, step_at, window_end, "first result"):
        if r.ok and r.user.isdigit() and old_users <= int(r.user) < new_users:
            firsts.setdefault(r.user, r.t)
    added = new_users - old_users
    done = len(firsts)
    seconds = round(max(firsts.values()) - step_at, 2) if firsts and done == added else None
    return {"added_users": added, "served": done, "seconds": seconds, "window_s": round(window_end - step_at, 1)}


def throughput(rows: Sequence[Row], t0: float, t1: float) -> Json:
    """Cells per second completed ok in [t0 + settle, t1), the settle (2 s, at most a third of the window)
    skipping the switch to zero think time."""
    start = t0 + min(2.0, (t1 - t0) / 3)
    ok = [r for r in in_window(rows, start, t1, "warm execute") if r.ok]
    span = max(t1 - start, 1e-9)
    return {"cells_per_s": round(len(ok) / span, 2), "cells": len(ok), "seconds": round(span, 1)}


def user_view(rows: Sequence[Row], t0: float, t1: float) -> Json:
    """What users saw: cells that failed, returns with state kept or lost, the time a return took."""
    window = in_window(rows, t0, t1)
    cells = [r for r in window if r.name in ("warm execute", "first result")]
    returns = [r for r in window if r.name == "state after idle"]
    back = [r.ms / 1000 for r in window if r.name == "first result" and r.kind == "state check" and r.ok]
    return {
        "cells": len(cells),
        "cells_failed": sum(1 for r in cells if not r.ok),
        "returns": len(returns),
        "state_kept": sum(1 for r in returns if r.ok),
        "state_lost": sum(1 for r in returns if not r.ok),
        "return_to_first_result_s": spread(back, 2),
    }


def cost(samples: Sequence[Sample], t0: float, t1: float) -> Json:
    """Memory-seconds (GB*s, PSS) and CPU-seconds of the model's processes over [t0, t1]."""
    window = [s for s in samples if t0 <= s.t <= t1]
    if len(window) < 2:
        return {"samples": len(window)}
    mem = sum((b.t - a.t) * (a.pss_mb + b.pss_mb) / 2 for a, b in pairwise(window))
    servers = [s.servers for s in window]
    return {
        "samples": len(window),
        "seconds": round(window[-1].t - window[0].t, 1),
        "memory_gb_s": round(mem / 1024, 2),
        "cpu_s": round(window[-1].cpu_s - window[0].cpu_s, 2),
        "mean_pss_mb": round(sum(s.pss_mb for s in window) / len(window), 1),
        "peak_pss_mb": round(max(s.pss_mb for s in window), 1),
        "mean_servers": round(sum(servers) / len(servers), 2),
        "max_servers": max(servers),
    }


def night(stages: list[Stage], samples: Sequence[Sample], started: float) -> Json:
    """The trace's first run of hours with nobody on: how long it lasted, and after how many seconds of it
    the model had nothing up (None: not before the morning; the night's cost is then not the model's floor)."""
    empty = [s for s in stages if s.phase == "trace" and s.users == 0]
    if not empty:
        return {}
    first = stages.index(empty[0])
    last = first
    while last + 1 < len(stages) and stages[last + 1].phase == "trace" and stages[last + 1].users == 0:
        last += 1
    t0, t1 = started + stages[first].start, started + stages[last].end
    zero = next((s.t for s in samples if t0 <= s.t <= t1 and s.servers == 0), None)
    return {"seconds": round(t1 - t0, 1), "zero_after_s": None if zero is None else round(zero - t0, 1)}


def run_figures(rows: Sequence[Row], started: float, stages: list[Stage], samples: Sequence[Sample]) -> Json:
    """Every figure of one locust run on the compare timeline (ramp, steady, burst, saturation, trace)."""
    w = {k: (started + a, started + b) for k, (a, b) in phase_windows(stages).items()}
    out: Json = {"phases": {k: [round(a - started, 1), round(b - started, 1)] for k, (a, b) in w.items()}}
    if "steady" in w:
        out["warm_latency_ms"] = latency(rows, *w["steady"])
        kinds = sorted({r.kind for r in in_window(rows, *w["steady"], "warm execute")})
        out["warm_latency_by_kind_ms"] = {
            k: spread([r.ms for r in in_window(rows, *w["steady"], "warm execute") if r.ok and r.kind == k])
            for k in kinds
        }
    if "burst" in w:
        before = next(s for s in reversed(stages) if s.phase != "burst" and s.start < w["burst"][0] - started)
        peak = max(s.users for s in stages if s.phase == "burst")
        out["burst_absorb"] = absorb(rows, w["burst"][0], w["burst"][1], before.users, peak)
        out["burst_latency_ms"] = latency(rows, *w["burst"])
    if "ramp" in w:
        out["ramp_latency_ms"] = latency(rows, *w["ramp"])
    if "saturation" in w:
        out["saturation"] = throughput(rows, *w["saturation"])
        t0, t1 = w["saturation"]
        out["saturation_latency_ms"] = latency(rows, t0 + min(2.0, (t1 - t0) / 3), t1)
    if "trace" in w:
        out["trace_users"] = user_view(rows, *w["trace"])
        out["trace_cost"] = cost(samples, *w["trace"])
        out["trace_night"] = night(stages, samples, started)
    out["all_users"] = user_view(rows, started, started + stages[-1].end + 60)
    return out
