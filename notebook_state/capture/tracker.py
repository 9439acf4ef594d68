"""The per-kernel tracker: what each cell could have touched, and the incremental checkpoint of it."""

from __future__ import annotations

import os
import time
import traceback
import types
from dataclasses import dataclass
from typing import Any

from .analysis import analyse_cell_again, reached_names, statements_of
from .groups import AliasIndex, reachable_ids, skip_ids
from .hashing import group_id
from .outbox import Outbox, write_json
from .process_state import ProcessState
from .replay import Binding, kind_of, plan, record_bindings
from .serialize import serialize

FORMAT = 1
# Where post_run_cell writes each cell's checkpoint (set by ``install``): the service picks it up once the
# cell's reply arrives, so a checkpoint costs no extra round trip to the kernel.
AUTO_DIR: str | None = None
# Blob bytes a cell's checkpoint may carry in its execute_reply (``install(reply=True)`` sets it): 0, files only.
AUTO_REPLY_LIMIT = 0


@dataclass
class GroupState:
    names: tuple[str, ...]
    hash: str
    size: int
    serializer: str


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class Tracker:
    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.ns: dict[str, Any] = shell.user_ns
        self.conservative = True  # the first checkpoint looks at everything
        self.pending: set[str] = set()
        self.known: set[str] = set()
        self.index = AliasIndex()
        self.groups: dict[str, GroupState] = {}
        self.name_gid: dict[str, str] = {}
        self.modules: dict[str, str] = {}
        self.unserialisable: dict[str, tuple[str, str]] = {}
        self.history: dict[str, Binding] = {}
        self.seqs: dict[str, int] = {}
        self.seq = 0
        self.errors: list[str] = []
        self._cell: list[Any] | None = None
        self._before: dict[str, int] = {}
        self._after: dict[str, int] | None = None
        self.executions = self._executions_seen = 0  # every execute (silent ones too), and as of the last cell
        self.reply: dict[str, Any] | None = None  # the last cell's checkpoint, for its execute_reply
        self._underscored: set[str] = set()  # names of the namespace known to start with "_" (never user names)
        # Process state (random generators, sys.path, IPython, libraries) outlives a reset of the variables.
        process = getattr(self, "process", None)
        self.process = process if isinstance(process, ProcessState) else ProcessState(shell)

    # -- names ------------------------------------------------------------------------------------------

    def is_user_name(self, name: str) -> bool:
        if name.startswith("_"):
            return False
        hidden = self.shell.user_ns_hidden
        return not (name in hidden and self.ns.get(name) is hidden[name])

    def _ids(self) -> dict[str, int]:
        """Identity of every candidate user name.

        IPython adds ``_i<n>`` and ``_<n>`` to the namespace for every cell, so it grows with the session to
        thousands of names, none a user name: those seen once are set aside and dropped in one C-level set
        difference, and only the rest are looked at one by one."""
        ns, hidden, underscored = self.ns, self.shell.user_ns_hidden, self._underscored
        if len(underscored) > 2 * len(ns) + 64:  # names deleted since: start over rather than grow
            underscored.clear()
        ids: dict[str, int] = {}
        for n in ns.keys() - underscored:
            if not n or n[0] == "_":
                underscored.add(n)
                continue
            v = ns[n]
            if not (n in hidden and v is hidden[n]):
                ids[n] = id(v)
        return ids

    def user_names(self) -> set[str]:
        return set(self._ids())

    # -- IPython events ---------------------------------------------------------------------------------

    def pre_run_cell(self, info: Any) -> None:
        try:
            # The previous cell's closing snapshot serves as this cell's opening one: whatever changed in
            # between (a frontend's silent execute) then shows up as rebound by this cell, which is safe.
            self.process.ensure_baseline()  # once, before the notebook's first cell
            self._before = self._after if self._after is not None else self._ids()
            source = getattr(info, "transformed_cell", None) or self.shell.transform_cell(info.raw_cell or "")
            cell = analyse_cell_again(source)
            cell.magics = "run_line_magic" in source
            # Code run since the last cell (a frontend's silent execute) may have changed anything.
            cell.quiet = cell.quiet and self.executions == self._executions_seen + 1
            self.process.pre_cell(cell, self.ns)
            if cell.conservative:
                self.conservative = True
            else:
                self.pending |= cell.names | reached_names(cell.names, self.ns)
            self._cell = cell.statements
        except Exception as exc:
            self.conservative = True
            self.process.dirty = True
            self._cell = None
            self.errors.append(f"pre_run_cell: {_error(exc)}")

    def pre_execute(self) -> None:
        self.executions += 1

    def post_run_cell(self, result: Any) -> None:
        try:
            statements, self._cell = self._cell, None
            self._executions_seen = self.executions
            self.seq += 1
            self.process.post_cell()
            before = self._before
            failed = getattr(result, "error_in_exec", None) is not None
            after = self._after = self._ids()
            rebound = {n for n, i in after.items() if before.get(n) != i} | (before.keys() - after.keys())
            self.pending |= rebound  # whatever changed identity is a candidate, however it was bound
            record_bindings(self.history, self.seqs, self.seq, statements or [], rebound, self.ns, failed)
        except Exception as exc:
            self.conservative = True
            self.errors.append(f"post_run_cell: {_error(exc)}")
        self.reply = None
        if AUTO_DIR is not None:
            out = os.path.join(AUTO_DIR, f"{self.seq:010d}")
            if not AUTO_REPLY_LIMIT:
                try:
                    os.mkdir(out, 0o700)
                except OSError as exc:
                    self.errors.append(f"auto checkpoint: {_error(exc)}")
                    return
            self.reply = self.checkpoint(out, outbox=Outbox(out, AUTO_REPLY_LIMIT), ids=self._after)

    def take_reply(self) -> dict[str, Any] | None:
        """The last cell's checkpoint, if it is to travel in the cell's reply; once."""
        reply, self.reply = self.reply, None
        return reply

    # -- checkpoint -------------------------------------------------------------------------------------

    def checkpoint(
        self, out_dir: str, full: bool = False, outbox: Outbox | None = None, ids: dict[str, int] | None = None
    ) -> dict[str, Any] | None:
        """Write the manifest (and changed blobs) into ``out_dir``, or into ``outbox``, which may hold them for
        the cell's reply instead: then they are returned. ``ids``: the namespace's identities, when just taken
        (a namespace of thousands of names costs a pass). Never raises."""
        t0 = time.perf_counter()
        errors, self.errors = self.errors, []
        out = outbox or Outbox(out_dir)
        try:
            try:
                manifest = self._checkpoint(out, full or self.conservative, full, errors, ids)
            except Exception as exc:
                errors.append(f"checkpoint: {_error(exc)}; retried writing everything\n{traceback.format_exc()}")
                self.__init__(self.shell)  # type: ignore[misc]
                out = Outbox(out_dir)  # files only: what the first attempt held is superseded
                try:
                    manifest = self._checkpoint(out, True, True, errors, None)
                except Exception as exc2:
                    self.__init__(self.shell)  # type: ignore[misc]
                    errors.append(f"checkpoint: {_error(exc2)}\n{traceback.format_exc()}")
                    return out.finish("errors.json", {"errors": errors})
            manifest["stats"]["seconds"] = round(time.perf_counter() - t0, 6)
            return out.finish("manifest.json", manifest)
        except OSError as exc:  # the directory could not be written: the service asks for a full one
            self.errors.append(f"checkpoint: {_error(exc)}")
            return None

    def _checkpoint(
        self, out: Outbox, everything: bool, force: bool, errors: list[str], user_ids: dict[str, int] | None
    ) -> dict[str, Any]:
        ns = self.ns
        user_ids = self._ids() if user_ids is None else user_ids
        current = set(user_ids)
        candidates = set(current) if everything else (self.pending & current) | (current - self.known)
        deleted = self.known - current
        skip = skip_ids(ns, self.shell) if candidates else set()
        for name in deleted:
            self.modules.pop(name, None)
            self.unserialisable.pop(name, None)
            self.index.drop(name)
            self.history.pop(name, None)
        values: set[str] = set()
        for name in candidates:
            value = ns[name]
            self.unserialisable.pop(name, None)
            if isinstance(value, types.ModuleType):
                self.modules[name] = value.__name__
                self.index.drop(name)
                continue
            self.modules.pop(name, None)
            values.add(name)
            try:
                ids, overflow = reachable_ids(value, skip)
            except Exception as exc:  # a broken __reduce__/referents: group it with everything
                errors.append(f"{name}: reachability failed ({_error(exc)})")
                ids, overflow = frozenset({id(value)}), True
            self.index.assign(name, ids, overflow)
        affected = set(values)
        for name in candidates | deleted:
            gid = self.name_gid.get(name)
            if gid in self.groups:
                affected |= set(self.groups[gid].names)
        affected = {n for n in affected if n in current and n not in self.modules}
        components = self.index.components(sorted(affected))
        old: dict[str, GroupState] = {}
        for name in set().union(candidates, deleted, *components):
            gid = self.name_gid.pop(name, None)
            if gid is not None and gid in self.groups:
                old[gid] = self.groups.pop(gid)
        for gone in old.values():  # members of dissolved groups not re-grouped below lose their gid too
            for name in gone.names:
                self.name_gid.pop(name, None)
        stats = {"candidates": len(candidates), "hashed_bytes": 0, "written_bytes": 0, "seconds": 0.0}
        written: set[str] = set()
        for comp in components:
            self._store(comp, out, old, force, stats, written, errors)
        lost_now = {n for n in self.unserialisable if n not in current}
        for name in lost_now:
            self.unserialisable.pop(name)
        replay: dict[str, dict[str, str]] = {}
        lost: dict[str, str] = {}
        if self.unserialisable:  # the namespace's names, only when something needs replaying
            restorable = set(self.name_gid) | set(self.modules) | (set(ns) - current)
            replay, lost = plan(self.unserialisable, self.history, restorable, self.seqs, ns)
        self.known = current
        self.pending.clear()
        self.conservative = False
        try:
            process, process_section = self.process.capture(out, force, user_ids)
        except Exception as exc:  # the variables' checkpoint stands; the service notices unstored parts
            process, process_section = {}, {}
            errors.append(f"process state: {_error(exc)}\n{traceback.format_exc()}")
        groups = {
            gid: {"names": list(g.names), "hash": g.hash, "size": g.size, "serializer": g.serializer,
                  "written": gid in written}
            for gid, g in sorted(self.groups.items())
        }  # fmt: skip
        return {
            "format": FORMAT,
            "execution_count": int(self.shell.execution_count) - 1,
            "groups": {**groups, **process},
            "process": process_section,
            "modules": dict(sorted(self.modules.items())),
            "replay": replay,
            "lost": lost,
            "stats": stats,
            "errors": errors,
        }

    def _store(
        self,
        names: set[str],
        out: Outbox,
        old: dict[str, GroupState],
        force: bool,
        stats: dict[str, Any],
        written: set[str],
        errors: list[str],
    ) -> None:
        ns = self.ns
        try:
            ser = serialize({n: ns[n] for n in sorted(names)}, ns)
        except Exception as exc:
            if len(names) == 1:
                (name,) = names
                self.unserialisable[name] = (kind_of(ns[name]), _error(exc))
                return
            bad = set()
            for name in sorted(names):
                try:
                    serialize({name: ns[name]}, ns)
                except Exception as each:
                    bad.add(name)
                    self.unserialisable[name] = (kind_of(ns[name]), _error(each))
            if not bad:
                errors.append(f"{sorted(names)} fail together ({_error(exc)}); stored one by one, aliasing lost")
                for name in sorted(names):
                    self._store({name}, out, old, force, stats, written, errors)
            elif names - bad:
                self._store(names - bad, out, old, force, stats, written, errors)
            return
        gid = group_id(names)
        stats["hashed_bytes"] += ser.size
        previous = old.get(gid)
        if force or previous is None or previous.hash != ser.hash:
            out.put(gid, ser)
            stats["written_bytes"] += ser.size
            written.add(gid)
        self.groups[gid] = GroupState(tuple(sorted(names)), ser.hash, ser.size, ser.serializer)
        for name in names:
            self.name_gid[name] = gid

    # -- after a restore --------------------------------------------------------------------------------

    def adopt(self, manifest: dict[str, Any], restored: set[str], replayed: set[str], modules: set[str]) -> None:
        """Take the restored manifest as the last checkpoint, so the next one writes only later changes."""
        self.__init__(self.shell)  # type: ignore[misc]
        self.conservative = False
        for gid, g in manifest.get("groups", {}).items():
            names = tuple(sorted(g["names"]))
            if "process" not in g and set(names) <= restored:
                self.groups[gid] = GroupState(names, g["hash"], g["size"], g["serializer"])
                self.name_gid.update(dict.fromkeys(names, gid))
        self.modules = {n: m for n, m in manifest.get("modules", {}).items() if n in modules}
        for name in replayed:
            entry = manifest["replay"][name]
            self.unserialisable[name] = (entry.get("kind", "?"), entry.get("reason", ""))
            self.history[name] = Binding(statements_of(entry["code"]), 0)
        skip = skip_ids(self.ns, self.shell)
        for name in restored | replayed:
            if name in self.ns:
                self.index.assign(name, *reachable_ids(self.ns[name], skip))
        self.known = self.user_names()
        # Names that exist but were not restored (a failed group) are new to the next checkpoint.
        self.pending = self.known - restored - replayed - modules


_write_json = write_json  # the restorer's report
