"""The study's summary table, filled from this run beside the study's published figures, and the ratios
between the models within the run."""

from __future__ import annotations

from typing import Any

from loadtests.compare.fmt import DASH, HEAD, Json, first_path, g, present, state_word

# The study's published figures (its summary table), quoted as published: no method, spread or raw data.
STUDY = {
    "cold": ("Higher", "~3.2 s (pods start ~3x faster)"),
    "warm": ("~200 ms", "~150 ms"),
    "zero": ("No (always-on pod per user)", "Yes"),
    "efficiency": ("Higher idle CPU and memory", "Uses less CPU and memory when idle"),
    "state": ("not reported", "not reported (its next steps: sessions across pods, state in Redis)"),
    "setup": ("not reported", "not reported"),
}


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
