"""Markdown tables from one or more result files, for the README and for notes: one table of figures per run
(with its configuration and commit), the issue's targets side by side, and throughput by level.

    python -m loadtests.gateway.tables loadtests/results/bench_gateway.json loadtests/results/bench_gateway-redis.json
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import Json

DASH = "-"


def g(tree: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def num(value: Any, unit: str = "", digits: int = 2) -> str:
    if value is None:
        return DASH
    text = f"{float(value):.{digits}f}".rstrip("0").rstrip(".") if digits else f"{float(value):.0f}"
    return f"{text}{unit}"


def signed(value: Any) -> str:
    return DASH if value is None else f"{float(value):+.2f}"


def row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def configuration(r: Json) -> str:
    env, cfg, svc = r["environment"], r["config"], g(r, "services", "serverless_kernel_gateway") or {}
    store = "Redis" if cfg["store"] == "redis" else "embedded store"
    return (
        f"{store}, checkpoints {'on' if cfg['checkpoint_per_cell'] else 'off'}, sandbox "
        f"{(svc.get('sandbox') or 'none').split(':')[0]}, pool {cfg['pool_size']}; {cfg['mode']} run; commit "
        f"`{env['git_commit']}`; {env['cpu_count']} x {env['cpu_model']}; load average "
        f"{env['loadavg_at_start'][0]} at start, {(env.get('loadavg_at_end') or [DASH])[0]} at end"
    )


Row = tuple[str, str, str, str]
"""A figure: what, raw jupyter_client, this service, jupyter-kernel-gateway."""


def figure_rows(r: Json) -> list[Row]:
    lat, cpu, mem, top = r["latency_ms"], r["cpu_ms_per_execute"], r["memory"], str(r["config"]["sessions"])
    raw_p50 = g(lat, "raw_jupyter_client_ipc", "p50")
    tp = r["throughput"]

    def over_raw(face: str) -> str:
        p50 = g(lat, face, "p50")
        return f"{num(p50, ' ms')} ({signed(None if p50 is None or raw_p50 is None else p50 - raw_p50)})"

    def faces(key: str, unit: str = " ms") -> str:
        ws, rest = g(cpu, "websocket_execute", key), g(cpu, "rest_execute", key)
        return f"WebSocket {num(ws, unit)}, REST {num(rest, unit)}"

    redis = ""
    if g(cpu, "rest_execute", "redis") is not None:
        redis = f"; redis-server WebSocket {num(g(cpu, 'websocket_execute', 'redis'))}, REST "
        redis += num(g(cpu, "rest_execute", "redis"))
    eps = {k: g(tp, k, top, "executes_per_second") for k in ("raw_jupyter_client", "ours_websocket", "ours_rest",
                                                             "jkg_websocket")}  # fmt: skip
    new = r["new_session"]
    cold = g(r, "replica_cold_start", "exec_to_first_result_ms")
    return [
        ("**service CPU per execute**", "none", faces("service") + redis,
         num(g(cpu, "jkg_websocket_execute", "service"), " ms")),
        ("**kernel CPU per execute** (the session's kernel)",
         num(g(cpu, "raw_jupyter_client_ipc", "session_kernel"), " ms"), faces("session_kernel"),
         num(g(cpu, "jkg_websocket_execute", "session_kernel"), " ms")),
        ("warm `1+1`, p50 (over raw)", num(raw_p50, " ms"),
         f"REST {over_raw('rest_execute')}, WebSocket {over_raw('websocket_execute')}",
         num(g(lat, "jkg_websocket_execute", "p50"), " ms")),
        (f"executes/s, {top} sessions", num(eps["raw_jupyter_client"], digits=0),
         f"WebSocket {num(eps['ours_websocket'], digits=0)}, REST {num(eps['ours_rest'], digits=0)}",
         num(eps["jkg_websocket"], digits=0)),
        ("a live idle session adds, PSS", "none",
         num(g(mem, "serverless_kernel_gateway", "added_pss_mib_per_session"), " MiB", 1),
         num(g(mem, "jupyter_kernel_gateway", "added_pss_mib_per_session"), " MiB", 1)),
        (f"{g(mem, 'evicted', 'sessions')} evicted sessions add, PSS in all", "none",
         num(g(mem, "evicted", "added_pss_mib_in_all"), " MiB", 1), "none"),
        ("new session, first result, p50",
         f"first execute on a fresh kernel {num(g(new, 'raw_first_execute_on_fresh_kernel_ms', 'p50'), ' ms', 1)}",
         f"pool warm {num(g(new, 'pool_warm_ms', 'p50'), ' ms', 1)}; pool empty "
         f"{num(g(new, 'pool_empty', 'beyond_pool_ms', 'p50'), ' ms', 0)}", DASH),
        ("replica cold start: exec to first result restored from Redis, p50 / max", "none",
         f"{num(g(cold, 'p50'), ' ms', 0)} / {num(g(cold, 'max'), ' ms', 0)}", DASH),
    ]  # fmt: skip


def header(r: Json) -> list[str]:
    jkg = g(r, "environment", "jupyter_kernel_gateway")
    return [
        row("", "raw jupyter_client", "this service", f"jupyter-kernel-gateway {jkg or '(skipped)'}"),
        row("---", "---", "---", "---"),
    ]


def figures(r: Json) -> list[str]:
    return [*header(r), *(row(*cells) for cells in figure_rows(r))]


def combined(results: Sequence[Json]) -> list[str]:
    """One table for several runs: each figure once per run, its row named by the run's store (raw and
    jupyter-kernel-gateway are those measured in that same run)."""
    per_run = [figure_rows(r) for r in results]
    lines = header(results[0])
    for i in range(len(per_run[0])):
        for r, rows in zip(results, per_run, strict=True):
            what, *cells = rows[i]
            lines.append(row(f"{what}, {'Redis' if r['config']['store'] == 'redis' else 'embedded-store'} run", *cells))
    return lines


def targets(results: Sequence[Json]) -> list[str]:
    names = [n for n, v in results[0]["targets"].items() if isinstance(v, dict) and "limit" in v]
    head = ["target", "limit", *(f"{r['config']['store']} ({r['config']['mode']})" for r in results)]
    lines = [row(*head), row(*(["---"] * len(head)))]
    for name in names:
        cells = []
        for r in results:
            check = r["targets"].get(name, {})
            mark = {True: "pass", False: "**fail**", None: "not measured"}[check.get("pass")]
            cells.append(f"{num(check.get('measured'), digits=3)} {check.get('unit', '')} {mark}")
        lines.append(row(f"`{name}`", results[0]["targets"][name]["limit"], *cells))
    return lines


def throughput(r: Json) -> list[str]:
    tp = r["throughput"]
    keys = [k for k in ("raw_jupyter_client", "ours_websocket", "ours_rest", "jkg_websocket") if k in tp]
    lines = [row("sessions", *(f"{k}: executes/s (service + kernels CPU ms/execute)" for k in keys)),
             row(*(["---"] * (len(keys) + 1)))]  # fmt: skip
    for level in r["config"]["concurrency_levels"]:
        cells = []
        for k in keys:
            stats = g(tp, k, str(level)) or {}
            c = stats.get("cpu_ms_per_execute", {})
            cpu = f"{num(c.get('service'))} + {num(c.get('kernels'))}" if "service" in c else num(c.get("kernels"))
            cells.append(f"{num(stats.get('executes_per_second'), digits=0)} ({cpu})")
        lines.append(row(str(level), *cells))
    return lines


def profile(r: Json, top: int = 10) -> list[str]:
    """Per face, the service's and the session kernel's top functions (py-spy, --profile runs only)."""
    lines: list[str] = []
    for face, p in (r.get("profile") or {}).items():
        cpu = p["cpu_ms_per_execute_while_sampled"]
        lines += [
            f"Profile, {face} ({p['executes']} executes; CPU per execute while sampled: service "
            f"{num(cpu.get('service'))} ms, session kernel {num(cpu.get('session_kernel'))} ms; estimated ms "
            "per execute = share of py-spy --gil samples x that CPU):",
            "",
            row("service: innermost", "ms", "service: our code, inclusive", "ms", "kernel: innermost", "ms",
                "kernel: our code, inclusive", "ms"),
            row(*(["---"] * 8)),
        ]  # fmt: skip
        columns = [p["service"]["self"], p["service"]["inclusive_ours"], p["session_kernel"]["self"],
                   p["session_kernel"]["inclusive_ours"]]  # fmt: skip
        for i in range(top):
            cells: list[str] = []
            for column in columns:
                entry = column[i] if i < len(column) else None
                cells += [f"`{entry['function']}`", num(entry["ms_per_execute_est"], digits=3)] if entry else ["", ""]
            lines.append(row(*cells))
        lines.append("")
    return lines


def render(results: Sequence[Json]) -> str:
    out: list[str] = []
    for r in results:
        out += [f"**{r['config']['store']}**: {configuration(r)}", "", *figures(r), "", *throughput(r), ""]
        out += profile(r)
    if len(results) > 1:
        out += ["All runs, row by row (each row's raw and jupyter-kernel-gateway are from the same run):", ""]
        out += [*combined(results), ""]
    out += ["Issue 9's targets:", "", *targets(results), ""]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    paths = list(sys.argv[1:] if argv is None else argv)
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
    print(render([json.loads(Path(p).read_text()) for p in paths]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
