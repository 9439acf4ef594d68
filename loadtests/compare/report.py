"""report.md from the results JSON: the study's summary table filled from this run, then every figure."""

from __future__ import annotations

from loadtests.compare.details import detail_tables
from loadtests.compare.fmt import HEAD, Json, present, table
from loadtests.compare.summary import ratios, summary_rows


def _load(env: Json) -> str:
    """The load averages at the start and end of the run: others' work on a shared machine shows here."""
    said = [
        f"{when} {' / '.join(f'{x:g}' for x in env[key])}"
        for when, key in (("at start", "load_average_at_start"), ("at end", "load_average_at_end"))
        if env.get(key)
    ]
    return f"load average (1 / 5 / 15 min) {', '.join(said)}; " if said else ""


def make_report(results: Json, plots: list[str]) -> str:
    env = results.get("environment", {})
    keys = present(results)
    wall = f"wall time {results['wall_s']:.0f} s; " if results.get("wall_s") else ""
    lines = [
        "# Three deployment models, measured on one machine",
        "",
        f"`{results.get('command', 'skg-compare')}` — {results.get('date', '')}, commit `{env.get('commit')}`, "
        f"{env.get('cpus')} CPUs ({env.get('cpu_model')}), {env.get('memory_gb')} GB, {env.get('platform')}; "
        f"{wall}{_load(env)}seed {results.get('seed')}. "
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
