"""What a cell could touch, from its source (ElasticNotebook-style static analysis).

Lexical names (bound, read, mutated through ``a.x = ...``, ``a[0] = ...``, ``a.append(...)``: the base name is
read, so it is a candidate) plus the globals reachable from notebook functions/classes the cell mentions. Cells
that can touch names without naming them (``exec``, ``eval``, ``globals()``, magics) are "conservative": every
name is a candidate.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import types
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeGuard

# Names/attributes that let a cell reach variables without naming them.
_DYNAMIC_NAMES = frozenset({"exec", "eval", "globals", "locals", "vars", "__import__", "execfile"})
_DYNAMIC_ATTRS = frozenset(
    {"run_line_magic", "run_cell_magic", "push", "ex", "ev", "del_var", "run_cell",
     "run_code", "safe_execfile", "user_ns", "user_global_ns", "drop_by_id", "__dict__"}
)  # fmt: skip
MAX_DEPTH = 8
# Statements and expressions that run code beyond the operators of the objects they name: calls, imports,
# iteration (a generator's body), truth tests and comparisons (__bool__, __eq__), with, del, raise, class bodies.
_RUNS_CODE = (
    ast.Call, ast.Import, ast.ImportFrom, ast.For, ast.AsyncFor, ast.While, ast.With, ast.AsyncWith, ast.ListComp,
    ast.SetComp, ast.DictComp, ast.GeneratorExp, ast.Delete, ast.Await, ast.Yield, ast.YieldFrom, ast.ClassDef,
    ast.Raise, ast.Assert, ast.Match, ast.Compare, ast.BoolOp, ast.If, ast.IfExp, ast.Starred, ast.Try,
)  # fmt: skip


@dataclass(frozen=True)
class Statement:
    """One top-level statement of a cell: its source, the names it binds and the names it reads."""

    source: str
    kind: str
    binds: frozenset[str]
    reads: frozenset[str]
    node: ast.stmt = field(compare=False, repr=False)


@dataclass
class CellAnalysis:
    names: set[str] = field(default_factory=set)  # every name the cell mentions (bound, read, deleted)
    conservative: bool = False
    reason: str = ""
    statements: list[Statement] = field(default_factory=list)
    # Runs no code of its own: no call, import, loop, comparison, ... (``_RUNS_CODE``); only the operators and
    # attributes of the objects it names, whose types the caller checks.
    quiet: bool = False
    magics: bool = False  # the transformed source runs line magics


def _target_names(node: ast.AST) -> set[str]:
    """Names bound at the top level scope by a statement (not inside nested functions/classes/lambdas)."""
    out: set[str] = set()

    def visit(n: ast.AST, top: bool) -> None:
        if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
            out.add(n.id)
        elif isinstance(n, ast.NamedExpr) and isinstance(n.target, ast.Name):
            out.add(n.target.id)  # walrus binds in the enclosing scope, even inside a comprehension
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            for a in n.names:
                if a.name != "*":
                    out.add(a.asname or a.name.split(".")[0])
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(n.name)
            return  # the body is another scope
        elif isinstance(n, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and n.name:
            out.add(n.name)
        elif isinstance(n, ast.MatchMapping) and n.rest:
            out.add(n.rest)
        if isinstance(n, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            for child in ast.walk(n):
                if isinstance(child, ast.NamedExpr) and isinstance(child.target, ast.Name):
                    out.add(child.target.id)
            return
        for child in ast.iter_child_nodes(n):
            visit(child, False)

    visit(node, True)
    return out


def _local_names(node: ast.AST) -> set[str]:
    """Names bound inside nested scopes of ``node`` (comprehension targets, lambda/function arguments)."""
    out: set[str] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.comprehension):
            out |= {t.id for t in ast.walk(n.target) if isinstance(t, ast.Name)}
        elif isinstance(n, ast.arg):
            out.add(n.arg)
    return out


def _reads(node: ast.AST) -> set[str]:
    loads = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    return loads - _local_names(node)


def _all_names(tree: ast.AST) -> tuple[set[str], str, bool]:
    names: set[str] = set()
    dynamic = ""
    quiet = True
    for n in ast.walk(tree):
        if quiet and (
            isinstance(n, _RUNS_CODE)
            or (isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.decorator_list)
            or (isinstance(n, ast.Assign) and any(isinstance(t, (ast.Tuple, ast.List)) for t in n.targets))
        ):
            quiet = False  # decorators are calls; unpacking iterates
        if isinstance(n, ast.Name):
            names.add(n.id)
            if n.id in _DYNAMIC_NAMES:
                dynamic = dynamic or f"uses {n.id}"
        elif isinstance(n, ast.Attribute) and n.attr in _DYNAMIC_ATTRS:
            dynamic = dynamic or f"uses .{n.attr}"
        elif isinstance(n, (ast.Global, ast.Nonlocal)):
            names.update(n.names)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            for a in n.names:
                if a.name == "*":
                    dynamic = dynamic or "uses import *"
                else:
                    names.add(a.asname or a.name.split(".")[0])
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(n.name)
        elif isinstance(n, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar, ast.MatchMapping)):
            bound = n.rest if isinstance(n, ast.MatchMapping) else n.name
            if bound:
                names.add(bound)
    return names, dynamic, quiet


def statements_of(source: str, tree: ast.Module | None = None) -> list[Statement]:
    if tree is None:
        tree = ast.parse(source)
    out = []
    for stmt in tree.body:
        segment = ast.get_source_segment(source, stmt) or ast.unparse(stmt)
        binds, reads = frozenset(_target_names(stmt)), frozenset(_reads(stmt))
        out.append(Statement(segment, type(stmt).__name__, binds, reads, stmt))
    return out


def analyse_cell(source: str) -> CellAnalysis:
    """Parse an (IPython-transformed) cell; a cell that does not parse is conservative."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError) as exc:
        return CellAnalysis(conservative=True, reason=f"does not parse: {exc}")
    names, dynamic, quiet = _all_names(tree)
    return CellAnalysis(names, bool(dynamic), dynamic, statements_of(source, tree), quiet and not dynamic)


_CACHED_SOURCE_CHARS = 16 * 1024


@functools.lru_cache(maxsize=128)
def _analysed(source: str) -> CellAnalysis:
    return analyse_cell(source)


def analyse_cell_again(source: str) -> CellAnalysis:
    """``analyse_cell``, remembered for small cells: notebooks and programs run the same cells again and again.
    A copy each time, as callers set its flags."""
    if len(source) > _CACHED_SOURCE_CHARS:
        return analyse_cell(source)
    cell = _analysed(source)
    return dataclasses.replace(cell, names=set(cell.names), statements=list(cell.statements))


# -- globals reached through notebook functions -------------------------------------------------------------


def is_notebook_function(obj: Any) -> TypeGuard[types.FunctionType]:
    return isinstance(obj, types.FunctionType) and obj.__module__ == "__main__"


def code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= code_names(const)
    return names


def _functions_of(obj: Any) -> list[types.FunctionType]:
    """The notebook functions a value can run when called or when its methods are called."""
    if isinstance(obj, types.MethodType):
        obj = obj.__func__
    if isinstance(obj, functools.partial) and is_notebook_function(obj.func):
        obj = obj.func
    if is_notebook_function(obj):
        out = [obj]
        wrapped = getattr(obj, "__wrapped__", None)
        if is_notebook_function(wrapped):
            out.append(wrapped)
        for cell in obj.__closure__ or ():
            try:
                inner = cell.cell_contents
            except ValueError:
                continue
            if is_notebook_function(inner):
                out.append(inner)
        return out
    cls = obj if isinstance(obj, type) else type(obj)
    if getattr(cls, "__module__", None) != "__main__":
        return []
    funcs: list[types.FunctionType] = []
    for klass in cls.__mro__:
        if klass.__module__ != "__main__":
            continue
        for attr in vars(klass).values():
            for f in (attr, getattr(attr, "__func__", None), getattr(attr, "fget", None), getattr(attr, "fset", None)):
                if is_notebook_function(f):
                    funcs.append(f)
    return funcs


def reached_names(names: Iterable[str], ns: dict[str, Any], max_depth: int = MAX_DEPTH) -> set[str]:
    """Globals read or written by the notebook functions/classes/instances bound to ``names``, recursively."""
    reached: set[str] = set()
    seen_code: set[int] = set()
    frontier = [(n, 0) for n in names]
    visited: set[str] = set()
    while frontier:
        name, depth = frontier.pop()
        if name in visited or depth > max_depth or name not in ns:
            continue
        visited.add(name)
        for func in _functions_of(ns[name]):
            if id(func.__code__) in seen_code:
                continue
            seen_code.add(id(func.__code__))
            for g in code_names(func.__code__):
                if g in ns:
                    reached.add(g)
                    frontier.append((g, depth + 1))
    return reached
