"""How the report writes figures: lookups in the results JSON, spreads, states, Markdown tables."""

from __future__ import annotations

from typing import Any

Json = dict[str, Any]
MODELS = ("dedicated", "peruser", "gateway")
HEAD = {
    "dedicated": "(a) dedicated: JupyterHub, server per user",
    "peruser": "(b) per-user serverless (stand-in)",
    "gateway": "(c) stateless gateway (this project)",
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


def table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def present(results: Json) -> list[str]:
    return [k for k in MODELS if k in results["models"]]
