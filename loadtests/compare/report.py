"""report.md from the results JSON: the study's summary table filled from this run, then every figure."""

from __future__ import annotations

from typing import Any

Json = dict[str, Any]
MODELS = ("dedicated", "peruser", "gateway")
HEAD = {
    "dedicated": "(a) dedicated: JupyterHub, server per user",
    "peruser": "(b) per-user serverless (stand-in)",
    "gateway": "(c) stateless gateway (this project)",
}
# The study's published figures (its summary table), quoted as published: no method, spread or raw data.
STUDY = {
    "cold": ("Higher", "~3.2 s (pods start ~3x faster)"),
    "warm": ("~200 ms", "~150 ms"),
    "zero": ("No (always-on pod per user)", "Yes"),
    "efficiency": ("Higher idle CPU and memory", "Uses less CPU and memory when idle"),
    "state": ("not reported", "not reported (its next steps: sessions across pods, state in Redis)"),
    "setup": ("not reported", "not reported"),
}
DASH = "—"


def g(data: Json, *path: str | int) -> Any:
    """data[path...] or None."""
    cur: Any = data
    for key in path:
        if not isinstance(cur, dict) or str(key) not in cur:
            return None
        cur = cur[str(key)]
    return cur


def ms(s: Json | None, keys: tuple[str, ...] = ("p50", "p90", "p99")) -> str:
    if not s or not s.get("n"):
        return DASH
    return " / ".join(f"{s[k]:g}" for k in keys) + f" (n={s['n']})"


def absorbed(a: Json | None) -> str:
    if not a:
        return DASH
    took = f"{a['seconds']:g}" if a.get("seconds") is not None else f"not all within {a['window_s']:g} s"
    return f"{a['added_users']} / {a['served']} / {took}"


def first_path(model: Json) -> Json:
    starts = model.get("starts") or {}
    return next(iter(starts.values()), {})


def state_word(kept: int | None, of: int | None) -> str:
    if not of:
        return DASH
    if kept == of:
        return f"**kept** ({kept}/{of})"
    return f"**lost** ({of - (kept or 0)}/{of} lost)" if not kept else f"mixed ({kept}/{of} kept)"


def summary_rows(results: Json) -> list[list[str]]:
    models = results["models"]
    rows: list[list[str]] = []

    def row(label: str, study: tuple[str, str], cell: Any) -> None:
        rows.append([label, *study, *(cell(models[k]) for k in present(results))])

    def cold(m: Json) -> str:
        p = first_path(m)
        s = p.get("cold_start_s")
        return DASH if not s or not s.get("n") else f"{s['p50']:g} s (p90 {s['p90']:g}, n={s['n']})"

    def warm(m: Json) -> str:
        p = first_path(m)
        start = p.get("warm_start_ms") or {}
        lat = g(m, "load", "warm_latency_ms") or {}
        a = f"new kernel {start['p50']:g} ms" if start.get("n") else ""
        b = f"cells p50/p90/p99 {lat['p50']:g}/{lat['p90']:g}/{lat['p99']:g} ms" if lat.get("n") else ""
        return "; ".join(x for x in (a, b) if x) or DASH

    def zero(m: Json) -> str:
        after = g(m, "idle", "after_idle_action") or {}
        took = g(m, "idle", "idle_action_s")
        what = {
            "dedicated": "culler stops idle servers",
            "peruser": "server stopped when idle",
            "gateway": "replicas stopped when idle",
        }.get(m.get("key", ""), "")
        return f"{what}: {after.get('servers', DASH)} left after {took} s" if after else DASH

    def efficiency(m: Json) -> str:
        lv = g(m, "idle", "levels") or {}
        top = max(lv, key=int) if lv else None
        c = g(m, "load", "trace_cost") or {}
        parts = []
        if top:
            parts.append(f"{lv[top]['pss_mb']:.0f} MB with {top} idle users")
        after = g(m, "idle", "after_idle_action")
        if after:
            parts.append(f"{after['pss_mb']:.0f} MB after the idle action")
        if c.get("memory_gb_s") is not None:
            parts.append(f"trace: {c['memory_gb_s']:g} GB·s, {c['cpu_s']:g} CPU·s")
        return "; ".join(parts) or DASH

    def state(m: Json) -> str:
        p = first_path(m)
        tu = g(m, "load", "trace_users") or {}
        cold_s = state_word(p.get("state_back"), p.get("cold_starts"))
        idle_s = state_word(g(m, "idle", "state_back"), g(m, "idle", "state_checked"))
        trace = f"; trace returns {tu.get('state_kept', 0)} kept / {tu.get('state_lost', 0)} lost" if tu else ""
        return f"after cold start {cold_s}; idle users {idle_s}{trace}"

    def setup(m: Json) -> str:
        comps = m.get("components") or []
        return f"{len(comps)} kinds of process: " + ", ".join(comps) if comps else DASH

    row("Cold start (no process to first result)", STUDY["cold"], cold)
    row("Warm start / warm latency", STUDY["warm"], warm)
    row("Scale to zero", STUDY["zero"], zero)
    row("Resource efficiency", STUDY["efficiency"], efficiency)
    row("State after idle", STUDY["state"], state)
    row("Setup complexity", STUDY["setup"], setup)
    return rows


def table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def present(results: Json) -> list[str]:
    return [k for k in MODELS if k in results["models"]]


def detail_tables(results: Json) -> list[str]:
    models = results["models"]
    keys = present(results)
    head = ["", *(HEAD[k] for k in keys)]
    out = []
    start_rows = []
    for k in keys:
        for label, p in (models[k].get("starts") or {}).items():
            start_rows.append(
                [
                    f"{HEAD[k]} — {label}",
                    ms(p.get("warm_start_ms")),
                    ms(p.get("cold_start_s")),
                    state_word(p.get("state_back"), p.get("cold_starts")),
                ]
            )
    out.append(
        "### Starts\n\nWarm start: a new kernel on running processes, to its first result. Cold start: "
        "every server culled or scaled to zero first, then the user's request to its first result "
        "(spawn or start, kernel, state check).\n\n"
        + table(
            ["model — path", "warm start ms p50 / p90 / p99", "cold start s p50 / p90 / p99", "variables after"],
            start_rows,
        )
    )

    def line(label: str, f: Any) -> list[str]:
        return [label, *(f(models[k]) for k in keys)]

    load = [
        line("warm cells at steady load, ms p50 / p90 / p99", lambda m: ms(g(m, "load", "warm_latency_ms"))),
        line("  trivial cells only", lambda m: ms(g(m, "load", "warm_latency_by_kind_ms", "trivial"))),
        line("cells during the ramp, ms", lambda m: ms(g(m, "load", "ramp_latency_ms"))),
        line("cells during the burst, ms", lambda m: ms(g(m, "load", "burst_latency_ms"))),
        line(
            "load step: users added / served / seconds until all were", lambda m: absorbed(g(m, "load", "burst_absorb"))
        ),
        line("throughput at saturation, cells/s", lambda m: str(g(m, "load", "saturation", "cells_per_s") or DASH)),
        line("  latency at saturation, ms", lambda m: ms(g(m, "load", "saturation_latency_ms"))),
    ]
    out.append(
        "### Under load (Jupyter WebSocket users, the same cell mix and think time on every model)\n\n"
        + table(head, load)
    )

    def level(n: str) -> Any:
        return lambda m: (
            f"{g(m, 'idle', 'levels', n)['pss_mb']:.0f} MB ({g(m, 'idle', 'levels', n)['servers']} up)"
            if g(m, "idle", "levels", n)
            else DASH
        )

    lv = sorted({n for k in keys for n in (g(models[k], "idle", "levels") or {})}, key=int)
    idle = [
        line(
            "no users",
            lambda m: DASH if g(m, "idle", "no_users") is None else f"{g(m, 'idle', 'no_users', 'pss_mb'):.0f} MB",
        )
    ]
    idle += [line(f"{n} idle users", level(n)) for n in lv]
    idle.append(
        line(
            "after the idle action",
            lambda m: (
                (f"{g(m, 'idle', 'after_idle_action', 'pss_mb'):.0f} MB after {g(m, 'idle', 'idle_action_s')} s")
                if g(m, "idle", "after_idle_action")
                else DASH
            ),
        )
    )
    idle.append(
        line(
            "idle users' variables after it",
            lambda m: state_word(g(m, "idle", "state_back"), g(m, "idle", "state_checked")),
        )
    )
    out.append(
        "### Idle memory (PSS of the model's processes; each user holds a kernel with a variable)\n\n"
        + table(head, idle)
    )

    def cost(key: str, fmt: str = "{:g}") -> Any:
        return lambda m: (
            fmt.format(g(m, "load", "trace_cost", key)) if g(m, "load", "trace_cost", key) is not None else DASH
        )

    trace = [
        line("memory-seconds, GB·s", cost("memory_gb_s")),
        line("CPU-seconds", cost("cpu_s")),
        line(
            "servers or replicas up, mean / max",
            lambda m: (
                f"{g(m, 'load', 'trace_cost', 'mean_servers')} / {g(m, 'load', 'trace_cost', 'max_servers')}"
                if g(m, "load", "trace_cost", "samples")
                else DASH
            ),
        ),
        line(
            "cells run / failed",
            lambda m: (
                f"{g(m, 'load', 'trace_users', 'cells')} / {g(m, 'load', 'trace_users', 'cells_failed')}"
                if g(m, "load", "trace_users")
                else DASH
            ),
        ),
        line(
            "users back after idling: state kept / lost",
            lambda m: (
                f"{g(m, 'load', 'trace_users', 'state_kept')} / {g(m, 'load', 'trace_users', 'state_lost')}"
                if g(m, "load", "trace_users")
                else DASH
            ),
        ),
        line(
            "  their return to first result, s p50 / p90 / p99",
            lambda m: ms(g(m, "load", "trace_users", "return_to_first_result_s")),
        ),
    ]
    out.append("### The daily trace (a day compressed in time; users leave and come back)\n\n" + table(head, trace))
    rest = g(models.get("gateway", {}), "rest_sse")
    if rest:
        out.append(
            "### The gateway's REST and SSE faces (steady, 3 users), ms p50 / p90 / p99\n\n"
            + table(["event", "latency"], [[k, ms(v)] for k, v in rest.items()])
        )
    runs = [
        line("wall time of this model's part, s", lambda m: str(g(m, "run", "wall_s"))),
        line("CPU-seconds of the model's processes, whole part", lambda m: str(g(m, "run", "model_cpu_s"))),
        line("CPU-seconds of locust (load generator)", lambda m: str(g(m, "load", "locust_cpu_s"))),
    ]
    out.append("### Run\n\n" + table(head, runs))
    return out


def ratios(results: Json) -> list[str]:
    """Within-run ratios: the machine is shared, so only comparisons inside one run mean much."""
    m = results["models"]
    out = []
    if "gateway" in m:
        gw = g(m["gateway"], "load", "trace_cost") or {}
        for k in ("dedicated", "peruser"):
            other = g(m.get(k, {}), "load", "trace_cost") or {}
            if gw.get("memory_gb_s") and other.get("memory_gb_s"):
                out.append(
                    f"- Daily trace, {HEAD[k]} ÷ gateway: memory-seconds "
                    f"**{other['memory_gb_s'] / gw['memory_gb_s']:.1f}x**, CPU-seconds "
                    f"**{other['cpu_s'] / max(gw['cpu_s'], 1e-9):.1f}x**."
                )
    return out


def make_report(results: Json, plots: list[str]) -> str:
    env = results.get("environment", {})
    keys = present(results)
    lines = [
        "# Three deployment models, measured on one machine",
        "",
        f"`{results.get('command', 'skg-compare')}` — {results.get('date', '')}, commit `{env.get('commit')}`, "
        f"{env.get('cpus')} CPUs ({env.get('cpu_model')}), {env.get('memory_gb')} GB, {env.get('platform')}. "
        f"{'**--quick: a machinery check on tiny samples, not a measurement.**' if results.get('quick') else ''}",
        "",
        "Every figure below comes from this run; the study's columns are its published figures, quoted.",
        "",
        "## Summary",
        "",
        table(
            ["", "study: JupyterHub + KubeSpawner", "study: Knative", *(HEAD[k] for k in keys)], summary_rows(results)
        ),
        "",
        *ratios(results),
        "",
        "## How each model ran here",
        "",
    ]
    for k in keys:
        lines.append(f"- **{HEAD[k]}**: " + " ".join(results["models"][k].get("notes") or []))
    lines += ["", "## Figures", ""]
    for t in detail_tables(results):
        lines += [t, ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    lines += ["## Versions", "", "```", *(f"{k}: {v}" for k, v in sorted(_versions(results).items())), "```", ""]
    for key, error in (results.get("failed") or {}).items():
        lines += [f"**{key} failed in this run:**", "", "```", error.strip()[-1500:], "```", ""]
    lines += ["## Caveats", "", *(f"- {c}" for c in results.get("caveats", [])), ""]
    return "\n".join(lines)


def _versions(results: Json) -> dict[str, str]:
    found: dict[str, str] = dict(results.get("environment", {}).get("versions", {}))
    for m in results["models"].values():
        found.update(m.get("versions") or {})
    return found
