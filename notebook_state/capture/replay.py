"""Variables that cannot be serialised: re-create them by re-running the statements that bound them, when safe.

Safe means: the statements are plain assignments/imports, they read only names that are themselves restorable
(group members, modules, IPython's own names, builtins, or replayable names re-created before them) and that were
not rebound after the statements ran, and they make no call that is an obvious side effect (deleting files,
writing, sending, running processes, modifying SQL, ...), directly or through a notebook function.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import io
import types
from dataclasses import dataclass
from typing import Any

from .analysis import Statement, code_names, is_notebook_function, reached_names, statements_of

_REPLAYABLE_KINDS = frozenset({"Assign", "AnnAssign", "AugAssign", "Import", "ImportFrom", "Expr"})
_UNSAFE_MODULES = frozenset(
    {"subprocess", "shutil", "requests", "httpx", "urllib", "urllib3", "aiohttp", "smtplib", "ftplib", "webbrowser",
     "multiprocessing", "signal", "boto3", "paramiko"}
)  # fmt: skip
_UNSAFE_ATTRS = frozenset(
    {"remove", "unlink", "rmdir", "removedirs", "rmtree", "rename", "renames", "replace_file", "system", "popen",
     "Popen", "kill", "killpg", "terminate", "send", "sendall", "sendto", "sendfile", "sendmail", "write",
     "writelines", "write_text", "write_bytes", "truncate", "post", "put", "patch", "delete", "executescript",
     "executemany", "commit", "fork", "urlopen", "touch", "mkdir", "makedirs", "chmod", "chown", "move",
     "copyfile", "copytree", "run", "call", "check_call", "check_output", "start", "spawnv", "execv", "execvp"}
)  # fmt: skip
_READ_ONLY_SQL = ("select", "with", "pragma", "explain")
_REASONS = {
    "generator": "generator: re-created by re-running its statement; its position was reset",
    "file": "open file: re-opened by re-running its statement; its position was reset",
    "Connection": "database connection: re-opened by re-running its statement; uncommitted changes and the "
    "contents of an in-memory database are lost",
    "Cursor": "cursor: re-created by re-running its statement; its pending results were reset",
    "socket": "socket: re-created by re-running its statement; later calls on it (connect, ...) are not repeated",
}


MAX_CHAIN = 50
"""Statements kept for one name (augmented assignments accumulate); past it, the name is not replayed."""
_STAMP = 100_000  # bindings in cell n are stamped n * _STAMP + the statement's index


@dataclass
class Binding:
    """The latest statements that bound a name, and the cell sequence number of that binding."""

    statements: list[Statement]
    seq: int


def record_bindings(
    history: dict[str, Binding],
    seqs: dict[str, int],
    cell: int,
    statements: list[Statement],
    rebound: set[str],
    ns: dict[str, Any],
    failed: bool,
) -> None:
    """After cell number ``cell`` ran: the statements that bound each name (a chain, for ``x += 1`` or
    ``x = f(x)``) into ``history``, and when, in ``seqs``, which orders bindings across and within cells. A name
    rebound by code the cell's statements do not show (``global`` in a function, ``exec``) loses its history:
    it cannot be replayed. In a failed cell only names that were rebound count."""
    base = cell * _STAMP
    for i, stmt in enumerate(statements[: _STAMP - 1]):
        for name in stmt.binds:
            if name not in ns or (failed and name not in rebound):
                continue
            seqs[name] = base + i
            binding = history.get(name)
            if binding is not None and (stmt.kind == "AugAssign" or name in stmt.reads):
                binding.statements.append(stmt)
                binding.seq = base + i
                if len(binding.statements) > MAX_CHAIN:
                    binding.statements = []
            else:
                history[name] = Binding([stmt], base + i)
    for name in rebound:
        if seqs.get(name, -1) < base:
            seqs[name] = base + _STAMP - 1
            history.pop(name, None)


def kind_of(obj: Any) -> str:
    if isinstance(obj, io.IOBase) and hasattr(obj, "fileno") and hasattr(obj, "name"):
        return "file"
    return type(obj).__name__


def replay_reason(kind: str, error: str) -> str:
    return _REASONS.get(
        kind, f"{kind}: not serialisable ({error}); re-created by re-running its statement, state since then is lost"
    )


def _dotted(func: ast.expr) -> list[str]:
    parts: list[str] = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return parts[::-1]


def _resolve(parts: list[str], ns: dict[str, Any]) -> Any:
    """The object a dotted call target names, following only module attributes (no user code runs)."""
    if not parts:
        return None
    obj = ns.get(parts[0], getattr(builtins, parts[0], None))
    for attr in parts[1:]:
        if not isinstance(obj, types.ModuleType):
            return None
        obj = getattr(obj, attr, None)
    return obj


def _open_mode(call: ast.Call) -> ast.expr | None:
    if len(call.args) >= 2:
        return call.args[1]
    return next((k.value for k in call.keywords if k.arg == "mode"), None)


def _call_hazard(call: ast.Call, ns: dict[str, Any]) -> str | None:
    parts = _dotted(call.func)
    last = parts[-1] if parts else ""
    if last in _UNSAFE_ATTRS:
        return f"calls {'.'.join(parts)}(), which may have side effects"
    if last == "open":
        mode = _open_mode(call)
        if mode is not None and not (isinstance(mode, ast.Constant) and isinstance(mode.value, str)):
            return "opens a file with a computed mode"
        if isinstance(mode, ast.Constant) and isinstance(mode.value, str) and set(mode.value) & {"w", "x"}:
            return f"opens a file with mode {mode.value!r}, which would truncate or create it"
    if last == "execute":
        sql = call.args[0] if call.args else None
        if not (isinstance(sql, ast.Constant) and isinstance(sql.value, str)):
            return "runs computed SQL"
        if not sql.value.lstrip().lower().startswith(_READ_ONLY_SQL):
            return "runs SQL that may modify data"
    target = _resolve(parts, ns)
    module = getattr(target, "__module__", None) or getattr(target, "__name__", None)
    if isinstance(module, str) and module.split(".")[0] in _UNSAFE_MODULES:
        return f"calls {'.'.join(parts)} from {module}"
    if parts and is_notebook_function(ns.get(parts[0])):
        used = code_names(ns[parts[0]].__code__)
        for g in reached_names([parts[0]], ns):
            if is_notebook_function(ns.get(g)):
                used |= code_names(ns[g].__code__)
        risky = sorted(used & (_UNSAFE_ATTRS | _UNSAFE_MODULES))
        if risky:
            return f"calls notebook function {parts[0]}, which uses {', '.join(risky)}"
    return None


def hazard(stmt: Statement, ns: dict[str, Any]) -> str | None:
    """Why re-running ``stmt`` is not safe, or None."""
    if stmt.kind not in _REPLAYABLE_KINDS:
        return f"bound by a {stmt.kind} statement"
    for node in ast.walk(stmt.node):
        if isinstance(node, ast.Call):
            reason = _call_hazard(node, ns)
            if reason:
                return reason
        elif isinstance(node, (ast.Yield, ast.YieldFrom, ast.Await)):
            return "uses yield/await at the top level"
    return None


def plan(
    unserialisable: dict[str, tuple[str, str]],
    history: dict[str, Binding],
    restorable: set[str],
    seqs: dict[str, int],
    ns: dict[str, Any],
) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """Split unserialisable names ``{name: (kind, error)}`` into ordered replay entries and lost reasons."""
    replay: dict[str, dict[str, str]] = {}
    lost: dict[str, str] = {}
    visiting: set[str] = set()

    def resolve(name: str) -> bool:
        if name in replay:
            return True
        if name in lost:
            return False
        kind, error = unserialisable[name]
        why = _why_not(name, kind, error)
        if why is None:
            code = "\n".join(s.source for s in history[name].statements)
            replay[name] = {"code": code, "kind": kind, "reason": replay_reason(kind, error)}
            return True
        lost[name] = f"{error}; not re-creatable: {why}"
        return False

    def _why_not(name: str, kind: str, error: str) -> str | None:
        binding = history.get(name)
        if binding is None or not binding.statements:
            return "no statement in a cell bound it"
        visiting.add(name)
        try:
            bound_before: set[str] = set()
            for stmt in binding.statements:
                reason = hazard(stmt, ns)
                if reason:
                    return reason
                for r in sorted(stmt.reads - bound_before):
                    if r in restorable or (r not in ns and hasattr(builtins, r)):
                        if seqs.get(r, 0) > binding.seq:
                            return f"it reads {r!r}, which was rebound after the statement ran"
                        continue
                    if r in unserialisable and r not in visiting:
                        if seqs.get(r, 0) > binding.seq:
                            return f"it reads {r!r}, which was rebound after the statement ran"
                        if resolve(r):
                            continue
                        return f"it reads {r!r}, which cannot be restored"
                    return f"it reads {r!r}, which cannot be restored"
                bound_before |= stmt.binds
            return None
        finally:
            visiting.discard(name)

    for name in sorted(unserialisable):
        resolve(name)
    return replay, lost


def run(entries: dict[str, dict[str, str]], ns: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """Re-run replay entries in order in ``ns``; other names the code rebinds keep their restored values."""
    replayed: list[str] = []
    lost: dict[str, str] = {}
    done: dict[str, str | None] = {}  # code -> None if it ran, else the error
    for name, entry in entries.items():
        code = entry.get("code", "")
        if code not in done:
            try:
                binds = set().union(*(s.binds for s in statements_of(code)))
                keep = {n: ns[n] for n in binds - set(entries) if n in ns}
                sink = io.StringIO()
                with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                    exec(compile(code, f"<replay {name}>", "exec"), ns)
                ns.update(keep)
                done[code] = None
            except BaseException as exc:
                done[code] = f"{type(exc).__name__}: {exc}"
        error = done[code]
        if error is not None:
            lost[name] = f"re-running its statement failed: {error}"
        elif name not in ns:
            lost[name] = "re-running its statement did not bind it"
        else:
            replayed.append(name)
    return replayed, lost
