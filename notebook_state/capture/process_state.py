"""Checkpoint and restore of process state through the hooks of ``hooks.py``.

After each cell every applicable hook's fingerprint is compared with the one of its last capture; only hooks
whose fingerprint moved are captured, and of their parts only those whose content hash changed are written.
Each part is a blob in the same format as a variable group and is listed among the manifest's ``groups``
with no variable names and a ``process`` field::

    "groups": {"p<xxh64 of hook and part>": {"names": [], "hash": ..., "size": ..., "serializer": ...,
                                             "written": true, "process": "random", "part": ""}}
    "process": {"lost": {"history.out": "Out[3] (a 2 MiB DataFrame, held by no variable)"},
                "inline": {"history.in": {"tail": "<base64 of a blob>"}}}

so the service stores, signs, keeps and drops them exactly as variable groups. Parts a hook marks ``inline``
(small, changing with nearly every cell) are carried in the manifest itself instead. A restore runs the hooks in
order: ``before_variables`` ones first, the rest after the variables; its report gains
``"process": {"restored": [hook, ...], "lost": {hook: reason}}``.
"""

from __future__ import annotations

import os
import sys
import traceback
import types
from typing import Any

from . import (
    hooks_display,
    hooks_history,
    hooks_ipython,
    hooks_libraries,
    hooks_matplotlib,
    hooks_modules,
    hooks_random,
    hooks_runtime,
)
from .analysis import CellAnalysis
from .hooks import Context, Hook, Parts, each_cell_hooks, register_builtin, registered
from .outbox import Outbox
from .process_parts import Entry, entry, from_inline, part_gid, to_inline
from .serialize import load_blob, serialize, serialize_data

_ALWAYS = object()

for _module in (hooks_runtime, hooks_modules, hooks_random, hooks_ipython, hooks_display, hooks_history,
                hooks_libraries, hooks_matplotlib):  # fmt: skip
    register_builtin(_module.HOOKS)


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return False


class ProcessState:
    """The process-state side of one kernel's tracker."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.enabled = True
        self.baselines: dict[str, Any] | None = None
        self.fingerprints: dict[str, Any] = {}
        self.entries: dict[str, dict[str, Entry]] = {}
        self.lost: dict[str, str] = {}
        self.inline: dict[str, dict[str, Any]] = {}
        self._groups: dict[str, dict[str, Any]] | None = None  # the manifest's process groups, none written
        self._registry: list[Hook] | None = None
        self.memos: dict[str, dict[str, Any]] = {}
        self._magics: list[tuple[str, str]] = []
        # Code of the notebook's may have run since the last capture; when not (only cells that run no code of
        # their own did), only each_cell hooks can have moved.
        self.dirty = True

    def _context(self, hook: Hook, full: bool = False, user_ids: dict[str, int] | None = None) -> Context:
        baseline = (self.baselines or {}).get(hook.name)
        return Context(self.shell, self.shell.user_ns, baseline, full, user_ids, self.memo(hook.name))

    def memo(self, name: str) -> dict[str, Any]:
        memo = self.memos.get(name)
        if memo is None:
            memo = self.memos[name] = {}
        return memo

    def ensure_baseline(self) -> None:
        """What a fresh kernel looks like, once: before the first cell, or before a restore."""
        if self.baselines is not None or not self.enabled:
            return
        self.baselines = {}
        for hook in registered():
            if hook.baseline is None or (hook.requires and hook.requires not in sys.modules):
                continue
            try:
                self.baselines[hook.name] = hook.baseline(self._context(hook))
            except Exception as exc:
                self.lost[hook.name] = f"its baseline failed: {_error(exc)}"

    # -- the cell's magics (``%autoreload 2``, ...): seen in the source, remembered once the cell ran ----------

    def pre_cell(self, cell: CellAnalysis, ns: dict[str, Any]) -> None:
        if not (cell.quiet and all(_quiet_value(ns[n]) for n in cell.names if n in ns)):
            self.dirty = True
        if cell.conservative and cell.magics:
            self._magics = hooks_ipython.magic_calls(cell.statements)

    def post_cell(self) -> None:
        if self._magics:
            magics, self._magics = self._magics, []
            hooks_ipython.note_magics(self.shell, magics, self.memo("ipython.magic_lines"))

    # -- checkpoint -------------------------------------------------------------------------------------------

    def capture(
        self, out: Outbox, full: bool = False, user_ids: dict[str, int] | None = None
    ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
        """Capture what moved; return the manifest's process groups and its ``process`` section."""
        if not self.enabled:
            return {}, {}
        self.ensure_baseline()
        written: set[str] = set()
        everything = registered()
        if everything is not self._registry:  # hooks were added or removed: forget the state of gone ones
            self._registry = everything
            names = {h.name for h in everything}
            for gone in [n for n in self.entries.keys() | self.inline.keys() if n not in names]:
                self.entries.pop(gone, None)
                self.inline.pop(gone, None)
                self._groups = None
        hooks = everything if self.dirty or full else each_cell_hooks()
        self.dirty = False
        baselines = self.baselines or {}
        # One context for every fingerprint (they run after each cell: a context each would cost more than most
        # fingerprints); a capture gets its own.
        shared = Context(self.shell, self.shell.user_ns, None, full, user_ids or {})
        modules = sys.modules
        for hook in hooks:
            name = hook.name
            if hook.requires and hook.requires not in modules and name not in self.entries:
                continue
            shared.baseline = baselines.get(name)
            shared.memo = self.memo(name)
            try:
                fp = hook.fingerprint(shared) if hook.fingerprint is not None else _ALWAYS
            except Exception:
                fp = _ALWAYS
            last = self.fingerprints.get(name, _ALWAYS)
            if not full and fp is not _ALWAYS and last is not _ALWAYS and _same(fp, last):
                continue
            ctx = self._context(hook, full=full, user_ids=shared.user_ids)
            ctx.previous = None if full or last is _ALWAYS else last
            ctx.fingerprint = None if fp is _ALWAYS else fp
            self._capture_hook(hook, ctx, fp, out, written)
        if self._groups is None:
            self._groups = {e.gid: e.record for parts in self.entries.values() for e in parts.values()}
        groups = self._groups
        if written:
            groups = {**groups, **{gid: {**groups[gid], "written": True} for gid in written if gid in groups}}
        # Returned as they are (no copies): the manifest is written out before the next capture changes them.
        return groups, {"lost": self.lost, "inline": self.inline}

    def _capture_hook(self, hook: Hook, ctx: Context, fp: Any, out: Outbox, written: set[str]) -> None:
        name = hook.name
        old = self.entries.get(name, {})
        try:
            state = hook.capture(ctx)
            parts = state if isinstance(state, Parts) else Parts({} if state is None else {"": state})
            if not ctx.full and any(k not in old and k not in parts for k in parts.keep):
                ctx.full, ctx.previous = True, None  # a part it did not send again was never stored: all
                state = hook.capture(ctx)
                parts = state if isinstance(state, Parts) else Parts({} if state is None else {"": state})
        except Exception as exc:
            self._groups = None
            self.entries.pop(name, None)
            self.inline.pop(name, None)
            self.fingerprints.pop(name, None)
            self.lost[name] = f"not captured: {_error(exc)}"
            return
        if parts.keep == old.keys() - parts.keys():  # only new parts (or none): most cells
            new = dict(old) if any(k not in parts.inline for k in parts) else old
        else:
            new = {k: old[k] for k in parts.keep if k in old and k not in parts}
        inline: dict[str, Any] = {}
        ns = self.shell.user_ns
        for part, value in parts.items():
            try:
                if part in parts.inline:
                    inline[part] = to_inline(value, hook.plain, ns)
                    continue
                ser = serialize_data({"state": value}) if hook.plain else serialize({"state": value}, ns)
            except Exception as exc:
                ctx.lost(f"{part or 'state'} not serialisable: {_error(exc)}")
                continue
            gid = part_gid(name, part)
            previous = old.get(part)
            if ctx.full or previous is None or previous.hash != ser.hash:
                out.put(gid, ser)
                written.add(gid)
            new[part] = (
                previous
                if previous is not None and previous.hash == ser.hash
                else (entry(name, part, gid, ser.hash, ser.size, ser.serializer))
            )
        if new != old:
            self._groups = None
        if new:
            self.entries[name] = new
        else:
            self.entries.pop(name, None)
        if inline:
            self.inline[name] = inline
        else:
            self.inline.pop(name, None)
        self.fingerprints[name] = fp
        if ctx.problems:
            self.lost[name] = "; ".join(ctx.problems)
        else:
            self.lost.pop(name, None)

    # -- restore ----------------------------------------------------------------------------------------------

    def restore(self, in_dir: str, manifest: dict[str, Any], before_variables: bool, report: dict[str, Any]) -> None:
        """Run the restore of every hook of this phase that the manifest holds state for. Never raises."""
        self.ensure_baseline()
        states: dict[str, dict[str, tuple[str, Any]]] = {}
        for gid, group in manifest.get("groups", {}).items():
            if "process" in group:
                states.setdefault(group["process"], {})[group.get("part", "")] = ("blob", gid)
        for name, parts in manifest.get("process", {}).get("inline", {}).items():
            for part, data in parts.items():
                states.setdefault(name, {})[part] = ("inline", data)
        restored: list[str] = report["restored"]
        lost: dict[str, str] = report["lost"]
        if before_variables:
            for name, reason in manifest.get("process", {}).get("lost", {}).items():
                lost[name] = reason
            if "notebook_state.hooks" in states:  # hooks the notebook added, before the hooks are listed
                self._restore_hook("notebook_state.hooks", states, in_dir, restored, lost)
        known = set()
        for hook in registered():
            known.add(hook.name)
            if hook.name in states and hook.before_variables == before_variables and hook.name not in restored:
                self._restore_hook(hook.name, states, in_dir, restored, lost)
        if not before_variables:
            for name in states.keys() - known:
                lost[name] = "no hook of that name is registered in this kernel"

    def _restore_hook(
        self,
        name: str,
        states: dict[str, dict[str, tuple[str, Any]]],
        in_dir: str,
        restored: list[str],
        lost: dict[str, str],
    ) -> None:
        hook = next((h for h in registered() if h.name == name), None)
        if hook is None:
            return
        ctx = self._context(hook)
        values: dict[str, Any] = {}
        for part, (where, ref) in states[name].items():
            try:
                if where == "inline":
                    values[part] = from_inline(ref, self.shell.user_ns)
                else:
                    values[part] = load_blob(os.path.join(in_dir, f"{ref}.bin"), self.shell.user_ns)["state"]
            except FileNotFoundError:
                ctx.lost(f"{part or 'state'}: its stored data is missing (not stored, or failed verification)")
            except Exception as exc:
                ctx.lost(f"{part or 'state'}: could not be loaded: {_error(exc)}")
        try:
            if values:
                hook.restore(values[""] if list(values) == [""] else values, ctx)
                restored.append(name)
        except Exception as exc:
            ctx.lost(f"{_error(exc)}\n{traceback.format_exc(limit=-3)}".strip())
        if ctx.problems:
            lost[name] = "; ".join([lost[name], *ctx.problems] if name in lost else ctx.problems)

    def adopt(self, manifest: dict[str, Any], restored: list[str]) -> None:
        """After a restore: the restored parts count as stored; every hook is fingerprinted afresh next time
        (its state is compared by content hash, so what came back unchanged is not written again)."""
        self.fingerprints.clear()
        self.dirty = True
        self._groups = None
        self.entries = {}
        self.lost = {}
        inline = manifest.get("process", {}).get("inline", {})
        self.inline = {name: dict(parts) for name, parts in inline.items() if name in restored}
        for gid, group in manifest.get("groups", {}).items():
            if group.get("process") in restored:
                hook, part = group["process"], group.get("part", "")
                self.entries.setdefault(hook, {})[part] = entry(
                    hook, part, gid, group["hash"], group["size"], group["serializer"]
                )


_INERT_TYPES = frozenset(
    {int, float, complex, bool, str, bytes, bytearray, type(None), list, tuple, dict, set, frozenset, range, slice,
     type(Ellipsis), types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType}
)  # fmt: skip
_library_type: dict[type, bool] = {}


def _quiet_value(value: Any) -> bool:
    """Whether the operators and attributes of ``value`` run library code only, not the notebook's."""
    t = value if isinstance(value, type) else type(value)
    if t in _INERT_TYPES:
        return True
    verdict = _library_type.get(t)
    if verdict is None:
        module = sys.modules.get(getattr(t, "__module__", None) or "")
        origin = getattr(module, "__file__", None)
        verdict = (
            module is not None
            and module.__name__ != "__main__"
            and (origin is None or not hooks_modules.is_notebook_file(origin))
        )
        _library_type[t] = verdict
    return verdict
