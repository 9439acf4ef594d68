"""The report's detailed tables: starts, load, idle memory, the daily trace, REST and SSE, the run itself."""

from __future__ import annotations

from typing import Any

from loadtests.compare.fmt import DASH, HEAD, Json, absorbed, g, ms, present, state_word, table


def night(plan: Json) -> tuple[float, float]:
    """(seconds the daily trace's hours with nobody on lasted, seconds fewer than at the day's scale)."""
    if not plan.get("hour") or not plan.get("day"):
        return 0.0, 0.0
    day = plan["day"]
    empty = sum(1 for h in range(plan["day_hours"]) if not day[(plan["day_first_hour"] + h) % len(day)])
    each = plan.get("night_hour") or plan["hour"]
    return round(empty * each, 3), round(empty * (plan["hour"] - each), 3)


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
    night_s, short_s = night(results.get("plan") or {})
    intro = ""
    if short_s > 0:
        # The night is shorter than the day's scale: say so, and what the missing part would cost at the floor.
        intro = (
            f"Each hour lasts {results['plan']['hour']:g} s, except the night's hours with nobody on: "
            f"{night_s:g} s in all, {short_s:g} s shorter than at the day's scale. A model that reaches its floor "
            "(nothing up) during the night stays there until the morning, so a full-length night would add "
            f"{short_s:g} s at that floor (last row: memory only; none for a model that never got there).\n\n"
        )

        def zero(m: Json) -> str:
            n = g(m, "load", "trace_night") or {}
            if not n:
                return DASH
            if n.get("zero_after_s") is None:
                return f"**not within the night** ({n['seconds']:g} s)"
            return f"after {n['zero_after_s']:g} s of {n['seconds']:g}"

        def extra(m: Json) -> str:
            floor = g(m, "idle", "no_users", "pss_mb")
            reached = g(m, "load", "trace_night", "zero_after_s") is not None
            return DASH if floor is None or not reached else f"+{short_s * floor / 1024:.2f}"

        trace.append(line("  nothing up during the night", zero))
        trace.append(line(f"  a full-length night would add ({short_s:g} s at the no-user floor), GB·s", extra))
    out.append(
        "### The daily trace (a day compressed in time; users leave and come back)\n\n" + intro + table(head, trace)
    )
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
