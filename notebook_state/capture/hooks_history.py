"""Built-in hooks for the cell history: ``In`` (with ``_i``, ``_ii``, ``_iii``, ``_i<n>``) and ``Out`` (with
``_``, ``__``, ``___``, ``_<n>``). The execution count itself is in the manifest.

``In`` grows by one cell each time, so it is stored in chunks of ``IN_CHUNK`` cells (fewer once their source
reaches ``IN_CHUNK_BYTES``): a closed chunk is written once, the open one travels inline in the manifest.
An ``Out`` entry is stored by value when it pickles to at most ``OUT_VALUE_LIMIT`` bytes (a copy: ``Out[n] is
x`` does not hold for those), else as a reference to the variable that holds the same object, else it is named
as lost with its size. Entries are stored in chunks of ``OUT_CHUNK``.
"""

from __future__ import annotations

from typing import Any

import cloudpickle  # type: ignore[import-untyped]

from .hooks import Context, Hook, Parts, Same

IN_CHUNK = 16
IN_CHUNK_BYTES = 4096
OUT_CHUNK = 16
OUT_VALUE_LIMIT = 16 * 1024


def _history(ctx: Context) -> Any:
    return getattr(ctx.shell, "history_manager", None)


# -- In -----------------------------------------------------------------------------------------------------


def _chunk_starts(ctx: Context, raw: list[str], fresh: bool) -> tuple[list[int], int]:
    """Where each chunk of In begins (the same on every kernel: a chunk is closed once it has ``IN_CHUNK``
    cells or ``IN_CHUNK_BYTES`` of source), found from where the last capture left off; and how many closed
    chunks that capture stored."""
    starts: list[int] = ctx.memo.setdefault("starts", [0])
    if fresh or starts[-1] > len(raw):
        starts[:] = [0]
    stored = len(starts) - 1
    start, size = starts[-1], 0
    for i in range(start, len(raw)):
        if i - start == IN_CHUNK or size >= IN_CHUNK_BYTES:
            start, size = i, 0
            starts.append(i)
        size += len(raw[i])
    return starts, stored


def _capture_inputs(ctx: Context) -> Parts | None:
    hm = _history(ctx)
    parsed, raw = hm.input_hist_parsed, hm.input_hist_raw
    if len(parsed) <= 1:
        return None
    starts, stored = _chunk_starts(ctx, raw, ctx.full or ctx.previous is None)
    parts = Parts(keep=[f"in{b}" for b in starts[:stored]], inline=["tail"])
    for b, e in zip(starts[stored:-1], starts[stored + 1 :], strict=True):
        parts[f"in{b}"] = (b, parsed[b:e], raw[b:e])
    tail = starts[-1]
    # The open chunk changes with every cell: in the manifest, no blob of its own.
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
    fingerprint=lambda ctx: len(_history(ctx).input_hist_parsed),
    capture=_capture_inputs,
    restore=_restore_inputs,
    order=400,
    plain=True,
)


# -- Out ----------------------------------------------------------------------------------------------------


def _record(value: Any, by_id: dict[int, str]) -> tuple[str, Any]:
    try:
        size = len(cloudpickle.dumps(value, protocol=5))
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


def _outputs_fingerprint(ctx: Context) -> Any:
    hm, ns = _history(ctx), ctx.ns
    refs_valid = all(
        ns.get(rec[1]) is obj for obj, rec in _records(ctx).values() if rec[0] == "variable"
    )  # a variable an entry points to was rebound: the entry becomes a copy, or is lost
    return (len(hm.output_hist), refs_valid, Same(getattr(ctx.shell.displayhook, "_", None)))


def _capture_outputs(ctx: Context) -> Parts | None:
    out: dict[int, Any] = _history(ctx).output_hist
    records = _records(ctx)
    if not out:
        records.clear()
        return None
    by_id = {i: name for name, i in ctx.user_ids.items()}
    ns = ctx.ns
    chunks: dict[int, dict[int, tuple[str, Any]]] = {}
    dirty: set[int] = set()
    for n in list(records):
        if n not in out:
            del records[n]
            dirty.add(n // OUT_CHUNK)
    for n, value in sorted(out.items()):
        seen = records.get(n)
        stale = seen is not None and seen[1][0] == "variable" and ns.get(seen[1][1]) is not value
        if seen is None or seen[0] is not value or stale:
            records[n] = (value, _record(value, {} if stale else by_id))
            dirty.add(n // OUT_CHUNK)
        chunks.setdefault(n // OUT_CHUNK, {})[n] = records[n][1]
    if ctx.full or ctx.previous is None:
        dirty = set(chunks)
    parts = Parts(
        {f"out{c}": chunks[c] for c in dirty if c in chunks}, keep=[f"out{c}" for c in chunks], inline=["last"]
    )
    hook = ctx.shell.displayhook
    positions = {id(v): n for n, v in out.items()}
    parts["last"] = tuple(positions.get(id(getattr(hook, u, None))) for u in ("_", "__", "___"))
    return parts


def _restore_outputs(state: dict[str, Any], ctx: Context) -> None:
    hm, ns, shell = _history(ctx), ctx.ns, ctx.shell
    restored: dict[int, Any] = {}
    missing: list[str] = []
    for key, chunk in state.items():
        if not key.startswith("out"):
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
    hm.output_hist.update(restored)
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
)

HOOKS = [INPUTS, OUTPUTS]
