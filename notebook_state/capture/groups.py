"""Alias groups: variables whose values share objects are stored together so that sharing survives a restore.

For each variable we keep the ids of the (non-atomic) objects reachable from its value, found with
``gc.get_referents`` plus numpy's ``.base`` links and object-array elements. Traversal stops at atoms (numbers,
strings, bytes, None), modules, classes (other than the root), code objects, library functions, module
dictionaries and the user namespace itself. Two variables whose id sets intersect are in one group; groups are
the connected components of that relation. Id sets are cached per variable and recomputed only for variables a
cell could have touched (their objects are alive while the variable is unchanged, so cached ids cannot have been
reused by other objects). A traversal that hits its bound is "overflowed": conservatively, it is grouped with
every non-atomic variable.
"""

from __future__ import annotations

import gc
import sys
import types
import weakref
from collections.abc import Iterable
from typing import Any

ATOM_TYPES: frozenset[type] = frozenset(
    {int, float, complex, bool, str, bytes, type(None), type(Ellipsis), type(NotImplemented), range}
)
_NOT_TRAVERSED = (types.ModuleType, types.CodeType, types.BuiltinFunctionType, type)

MAX_OBJECTS = 1_000_000
MAX_REFERENTS = 20_000_000


_module_dicts: tuple[int, frozenset[int]] = (-1, frozenset())


def skip_ids(ns: dict[str, Any], *extra: object) -> set[int]:
    """Ids never entered: the user namespace, every module's globals dict, and ``extra`` objects (the shell)."""
    global _module_dicts
    modules = list(sys.modules.values())
    if _module_dicts[0] != len(modules):  # walking ~1000 modules every cell costs more than the rest
        dicts = (getattr(mod, "__dict__", None) for mod in modules)
        _module_dicts = (len(modules), frozenset(id(d) for d in dicts if d is not None))
    return {id(ns), *(id(o) for o in extra), *_module_dicts[1]}


def _extra_referents(obj: Any) -> list[Any]:
    if isinstance(obj, weakref.ref):  # pickled (by dill) with its referent: keep them together
        target = obj()
        return [] if target is None else [target]
    np = sys.modules.get("numpy")
    if np is None or not isinstance(obj, np.ndarray):
        return []
    extra: list[Any] = []
    if obj.base is not None:
        extra.append(obj.base)
    if obj.dtype.hasobject:
        extra.extend(obj.ravel().tolist())
    return extra


def reachable_ids(
    root: Any, skip: set[int], max_objects: int = MAX_OBJECTS, max_referents: int = MAX_REFERENTS
) -> tuple[frozenset[int], bool]:
    """(ids of the non-atomic objects reachable from ``root`` incl. itself, whether the bound was hit)."""
    if type(root) in ATOM_TYPES or isinstance(root, types.ModuleType):
        return frozenset(), False
    seen = {id(root)}
    stack = [root]
    examined = 0
    while stack:
        obj = stack.pop()
        refs = gc.get_referents(obj)
        extra = _extra_referents(obj)
        if extra:
            refs.extend(extra)
        examined += len(refs)
        for ref in refs:
            t = type(ref)
            if t in ATOM_TYPES:
                continue
            i = id(ref)
            if i in seen or i in skip or isinstance(ref, _NOT_TRAVERSED):
                continue
            if t is types.FunctionType and ref.__module__ != "__main__":
                continue  # a library function: pickled by reference
            seen.add(i)
            stack.append(ref)
        if len(seen) > max_objects or examined > max_referents:
            return frozenset(seen), True
    return frozenset(seen), False


class AliasIndex:
    """Cached id sets per variable, and which variables share an id."""

    def __init__(self) -> None:
        self.idsets: dict[str, frozenset[int]] = {}
        self.overflow: set[str] = set()
        self._owner: dict[int, str] = {}
        self._shared: dict[int, set[str]] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.idsets

    def assign(self, name: str, ids: frozenset[int], overflow: bool) -> None:
        self.drop(name)
        self.idsets[name] = ids
        if overflow:
            self.overflow.add(name)
        owner, shared = self._owner, self._shared
        for i in ids:
            other = owner.get(i)
            if other is None:
                owner[i] = name
            elif other != name:
                shared.setdefault(i, {other}).add(name)

    def drop(self, name: str) -> None:
        ids = self.idsets.pop(name, None)
        self.overflow.discard(name)
        if not ids:
            return
        owner, shared = self._owner, self._shared
        for i in ids:
            held = shared.get(i)
            if held is not None:
                held.discard(name)
                if len(held) <= 1:
                    del shared[i]
                if held:
                    owner[i] = next(iter(held))
            elif owner.get(i) == name:
                del owner[i]

    def neighbours(self, name: str) -> set[str]:
        ids = self.idsets.get(name)
        if not ids:
            return set()
        out: set[str] = set(self.overflow)
        if name in self.overflow:
            out.update(n for n, s in self.idsets.items() if s)
        shared = self._shared
        if len(shared) < len(ids):
            for i, names in shared.items():
                if i in ids:
                    out |= names
        else:
            for i in ids:
                found = shared.get(i)
                if found is not None:
                    out |= found
        out.discard(name)
        return out

    def components(self, start: Iterable[str]) -> list[set[str]]:
        """Connected components (through shared ids) containing the names in ``start``."""
        done: set[str] = set()
        out: list[set[str]] = []
        for s in start:
            if s in done:
                continue
            comp = {s}
            frontier = [s]
            while frontier:
                n = frontier.pop()
                for m in self.neighbours(n):
                    if m not in comp:
                        comp.add(m)
                        frontier.append(m)
            done |= comp
            out.append(comp)
        return out
