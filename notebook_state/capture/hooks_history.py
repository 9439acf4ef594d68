"""Built-in hooks for the cell history: ``In`` (with ``_i``, ``_ii``, ``_iii``, ``_i<n>``) and ``Out`` (with
``_``, ``__``, ``___``, ``_<n>``). The execution count itself is in the manifest.

Both only grow, so each is kept as a log of chunks whose number grows with the logarithm of the history, not
with its length (the manifest lists every chunk after every cell): the newest entries form an open tail; once
it holds ``CHUNK`` entries (or ``IN_CHUNK_BYTES`` of source) it closes into a chunk written once, and ``FANOUT``
chunks of one level merge into one of the next. ``In``'s open tail travels inline in the manifest; ``Out``'s is
a blob, written only by cells that have an output.

An ``Out`` entry is stored by value when it pickles to at most ``OUT_VALUE_LIMIT`` bytes (a copy: ``Out[n] is
x`` does not hold for those), else as a reference to the variable holding the same object, else it is named as
lost with its size.
"""

from __future__ import annotations

import itertools
import pickle
from collections.abc import Sequence
from typing import Any

import cloudpickle  # type: ignore[import-untyped]

from .hooks import Context, Hook, Parts, Same, trait
from .serialize import is_plain_data

CHUNK = 16
IN_CHUNK_BYTES = 4096
FANOUT = 4
OUT_VALUE_LIMIT = 16 * 1024

Chunk = tuple[int, int, int]  # (level, first key, key past the last)
_TAIL = frozenset({"tail"})


def _history(ctx: Context) -> Any:
    return trait(ctx.shell, "history_manager")


def _inputs(ctx: Context) -> tuple[list[str], list[str]]:
    hm = _history(ctx)
    return trait(hm, "input_hist_parsed"), trait(hm, "input_hist_raw")


def _outputs(ctx: Context) -> dict[int, Any]:
    out: dict[int, Any] = trait(_history(ctx), "output_hist")
    return out


def _log(ctx: Context, fresh: bool) -> dict[str, Any]:
    log: dict[str, Any] = ctx.memo.setdefault("log", {})
    if fresh or "open" not in log:
        log.clear()
        log.update(chunks=[], open=0)
    return log


def _advance(log: dict[str, Any], keys: Sequence[int], sizes: Sequence[int], max_size: int) -> set[Chunk]:
    """Close the open tail (``keys``: the keys at or past it, in order) into chunks as it fills; merge
    ``FANOUT`` chunks of a level into one of the next. Returns the chunks made now."""
    chunks: list[Chunk] = log["chunks"]
    made: set[Chunk] = set()
    start, weight = 0, 0
    for i in range(len(keys)):
        if i > start and (i - start == CHUNK or weight >= max_size):
            chunks.append((0, keys[start], keys[i - 1] + 1))
            made.add(chunks[-1])
            start, weight = i, 0
            while len(chunks) >= FANOUT and len({c[0] for c in chunks[-FANOUT:]}) == 1:
                group = chunks[-FANOUT:]
                del chunks[-FANOUT:]
                chunks.append((group[0][0] + 1, group[0][1], group[-1][2]))
                made.difference_update(group)
                made.add(chunks[-1])
        weight += sizes[i]
    if keys:
        log["open"] = keys[start]
    return made


def _key(prefix: str, chunk: Chunk) -> str:
    return f"{prefix}{chunk[1]}-{chunk[2]}"


# -- In -----------------------------------------------------------------------------------------------------


def _cut_short(ctx: Context, length: int) -> bool:
    """The log describes more of In than there is: start it again."""
    log: dict[str, Any] = ctx.memo.get("log") or {}
    return int(log.get("open", 0)) > length


def _capture_inputs(ctx: Context) -> Parts | None:
    parsed, raw = _inputs(ctx)
    if len(parsed) <= 1:
        return None
    log = _log(ctx, ctx.full or ctx.previous is None or _cut_short(ctx, len(raw)))
    begin = log["open"]
    made = _advance(log, range(begin, len(raw)), [len(s) for s in raw[begin:]], IN_CHUNK_BYTES)
    if made or "keep" not in log:
        log["keep"] = frozenset(_key("in", c) for c in log["chunks"])
    parts = Parts(keep=log["keep"], inline=_TAIL)
    for _, b, e in made:
        parts[_key("in", (0, b, e))] = (b, parsed[b:e], raw[b:e])
    tail = log["open"]
    # The open tail changes with every cell: in the manifest, no blob of its own.
    parts["tail"] = (tail, parsed[tail:], raw[tail:])
    return parts


def _restore_inputs(state: dict[str, tuple[int, list[str], list[str]]], ctx: Context) -> None:
    hm = _history(ctx)
    parsed: list[str] = []
    raw: list[str] = []
    for begin, chunk_parsed, chunk_raw in sorted(state.values(), key=lambda chunk: chunk[0]):
        if begin > len(raw):
            ctx.lost(f"In[{len(raw)}:{begin}]: its part is missing; those inputs are empty")
            parsed += [""] * (begin - len(raw))
            raw += [""] * (begin - len(raw))
        parsed[begin:] = chunk_parsed
        raw[begin:] = chunk_raw
    hm.input_hist_parsed[:] = parsed
    hm.input_hist_raw[:] = raw
    # What store_inputs keeps for the next cell: it shifts _i00 -> _i -> _ii -> _iii.
    tail = ["", "", "", "", *raw[1:]][-4:]
    hm._iii, hm._ii, hm._i, hm._i00 = tail
    names = {f"_i{n}": source for n, source in enumerate(raw) if n}
    names.update(_i=hm._i00, _ii=hm._i, _iii=hm._ii)
    ctx.shell.push(names, interactive=False)


INPUTS = Hook(
    "history.in",
    fingerprint=lambda ctx: len(_inputs(ctx)[0]),
    capture=_capture_inputs,
    restore=_restore_inputs,
    order=400,
    plain=True,
    each_cell=True,
)


# -- Out ----------------------------------------------------------------------------------------------------


def _record(value: Any, by_id: dict[int, str]) -> tuple[str, Any]:
    error = ""
    try:
        plain = is_plain_data(value, 64)  # the C pickler: most outputs are numbers and strings
        size = len(pickle.dumps(value, protocol=5) if plain else cloudpickle.dumps(value, protocol=5))
    except Exception as exc:
        size, error = -1, f"{type(exc).__name__}: {exc}"
    if 0 <= size <= OUT_VALUE_LIMIT:
        return ("value", value)
    name = by_id.get(id(value))
    if name is not None:
        return ("variable", name)
    what = f"a {size / 1024:.0f} KiB {type(value).__name__}" if size > 0 else f"not serialisable ({error})"
    return ("lost", f"{what}, held by no variable")


def _records(ctx: Context) -> dict[int, tuple[Any, tuple[str, Any]]]:
    """Out entries already looked at: {n: (the object, its record)}."""
    records: dict[int, tuple[Any, tuple[str, Any]]] = ctx.memo.setdefault("records", {})
    return records


def _refs(ctx: Context) -> dict[int, tuple[Any, str]]:
    """The entries stored as a variable: {n: (the object, the variable)}, checked after every cell."""
    refs: dict[int, tuple[Any, str]] = ctx.memo.setdefault("refs", {})
    return refs


def _outputs_fingerprint(ctx: Context) -> Any:
    out, ns = _outputs(ctx), ctx.ns
    # A variable an entry points to was rebound: the entry becomes a copy, or is lost.
    refs_valid = all(ns.get(name) is obj for obj, name in _refs(ctx).values())
    under = getattr(trait(ctx.shell, "displayhook"), "_", None)
    return (len(out), next(reversed(out), None), refs_valid, Same(under))


def _capture_outputs(ctx: Context) -> Parts | None:
    out = _outputs(ctx)
    records, refs = _records(ctx), _refs(ctx)
    fresh = ctx.full or ctx.previous is None
    if fresh or not out:
        records.clear()
        refs.clear()
    if not out:
        return None
    log = _log(ctx, fresh)
    by_id = {i: name for name, i in ctx.user_ids.items()}
    dirty: set[int] = set()  # entries whose record changed

    def look(n: int) -> None:
        records[n] = (out[n], _record(out[n], by_id))
        refs.pop(n, None)
        if records[n][1][0] == "variable":
            refs[n] = (out[n], records[n][1][1])
        dirty.add(n)

    for n, (obj, name) in list(refs.items()):  # the variable was rebound: a copy if small enough, else lost
        if out.get(n) is obj and ctx.ns.get(name) is not obj:
            look(n)
    new = list(itertools.takewhile(lambda n: n not in records or records[n][0] is not out[n], reversed(out)))
    for n in reversed(new):
        look(n)
    if len(records) != len(out):  # entries culled by IPython's output cache, or deleted
        for n in [n for n in records if n not in out]:
            del records[n]
            refs.pop(n, None)
            dirty.add(n)
        for n in [n for n in out if n not in records]:
            look(n)
    begin = log["open"]
    tail = list(itertools.takewhile(lambda n: n >= begin, reversed(out)))[::-1]
    made = _advance(log, tail, [1] * len(tail), CHUNK + 1)
    chunks: list[Chunk] = log["chunks"]
    changed = made | {c for c in chunks if any(c[1] <= n < c[2] for n in dirty)}
    parts = Parts(keep=[_key("out", c) for c in chunks if c not in changed], inline=["last"])
    for c in changed:
        parts[_key("out", c)] = {n: records[n][1] for n in range(c[1], c[2]) if n in records}
    parts["tail"] = {n: records[n][1] for n in tail if n >= log["open"]}
    hook = ctx.shell.displayhook
    newest = {id(out[n]): n for n in itertools.islice(reversed(out), 8)}  # _, __, ___ are among them
    parts["last"] = tuple(newest.get(id(getattr(hook, u, None))) for u in ("_", "__", "___"))
    return parts


def _restore_outputs(state: dict[str, Any], ctx: Context) -> None:
    hm, ns, shell = _history(ctx), ctx.ns, ctx.shell
    restored: dict[int, Any] = {}
    missing: list[str] = []
    for key, chunk in state.items():
        if key == "last":
            continue
        for n, (kind, value) in chunk.items():
            if kind == "value":
                restored[n] = value
            elif kind == "variable" and value in ns:
                restored[n] = ns[value]
            else:
                missing.append(f"Out[{n}] ({value if kind == 'lost' else f'variable {value} is gone'})")
    if missing:
        ctx.lost("output history not restored: " + ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
    hm.output_hist.clear()
    hm.output_hist.update(sorted(restored.items()))
    hook = shell.displayhook
    unders = [restored.get(n) if n is not None else None for n in state.get("last", (None, None, None))]
    for name, value in zip(("_", "__", "___"), unders, strict=True):
        setattr(hook, name, "" if value is None else value)
    names: dict[str, Any] = {f"_{n}": v for n, v in restored.items()}
    names.update({"_": hook._, "__": hook.__, "___": hook.___})
    shell.push(names, interactive=False)


OUTPUTS = Hook(
    "history.out",
    fingerprint=_outputs_fingerprint,
    capture=_capture_outputs,
    restore=_restore_outputs,
    order=410,  # after variables (entries that are variables) and replays
    each_cell=True,
)

HOOKS = [INPUTS, OUTPUTS]
