"""Built-in hook for modules: the ones imported since the kernel started are imported again before variables
are loaded (a package's submodules included: ``import xml.dom.minidom`` binds only ``xml``), and the notebook's
own modules (files outside the interpreter's and libraries' directories) keep their source, to be re-created
from it where their file is not (another machine, or a file deleted since)."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import os
import site
import sys
import sysconfig
from typing import Any

from .hooks import Context, Hook

_MAX_SOURCE = 1024 * 1024  # a notebook module's source is kept (to re-create it elsewhere) up to this size


_library_roots: tuple[str, ...] | None = None


def _own_files(ctx: Context) -> dict[str, str]:
    """Notebook module name -> its file, for the fingerprint."""
    files: dict[str, str] = ctx.memo.setdefault("files", {})
    return files


def _sources(ctx: Context) -> dict[str, tuple[str, int | None, str]]:
    """Notebook module name -> (file, its mtime when read, source): read again only when the file changed, and
    kept when the file is gone (the notebook deleted it, or this kernel re-created the module from a copy)."""
    sources: dict[str, tuple[str, int | None, str]] = ctx.memo.setdefault("sources", {})
    return sources


def _libraries() -> tuple[str, ...]:
    global _library_roots
    if _library_roots is None:
        roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, *sysconfig.get_paths().values()}
        with contextlib.suppress(Exception):
            roots.update(site.getsitepackages())
            roots.add(site.getusersitepackages())
        _library_roots = tuple(os.path.join(os.path.realpath(r), "") for r in roots if r)
    return _library_roots


def is_notebook_file(origin: str) -> bool:
    return origin.endswith(".py") and not os.path.realpath(origin).startswith(_libraries())


def _kind(name: str, module: Any) -> str | None:
    """None: not importable by name (made at run time, or an alias); its file: a notebook module; else ""."""
    spec = getattr(module, "__spec__", None)
    if spec is None or spec.name != name:
        return None
    origin = spec.origin
    return origin if isinstance(origin, str) and spec.has_location and is_notebook_file(origin) else ""


def _modules_fingerprint(ctx: Context) -> Any:
    mtimes: list[int | None] = []
    for path in list(_own_files(ctx).values())[:20]:  # edited notebook modules (autoreload) are captured again
        try:
            mtimes.append(os.stat(path).st_mtime_ns)
        except OSError:
            mtimes.append(None)
    return (len(sys.modules), tuple(mtimes))


def _capture_modules(ctx: Context) -> dict[str, Any] | None:
    base: frozenset[str] = ctx.baseline or frozenset()
    names: list[str] = []
    sources: dict[str, tuple[str, str]] = {}
    own = _own_files(ctx)
    own.clear()
    # Each module is looked at once (its spec, and a realpath() of its file): {name: (module, what it is)}.
    seen: dict[str, tuple[Any, str | None]] = ctx.memo.setdefault("seen", {})
    for name, module in list(sys.modules.items()):
        if name in base or name == "__main__":
            continue
        known = seen.get(name)
        if known is None or known[0] is not module:
            known = seen[name] = (module, _kind(name, module))
        kind = known[1]
        if kind is None:
            continue
        names.append(name)
        if kind != "":
            own[name] = kind
            if not getattr(module.__spec__, "submodule_search_locations", None):  # a package: several files
                source = _source(name, kind, ctx)
                if source is not None:
                    sources[name] = (kind, source)
    kept = _sources(ctx)
    for gone in kept.keys() - own.keys():
        del kept[gone]
    for gone in seen.keys() - sys.modules.keys():  # not kept alive by this memo
        del seen[gone]
    return {"modules": sorted(names), "sources": sources} if names else None


def _source(name: str, origin: str, ctx: Context) -> str | None:
    try:
        mtime: int | None = os.stat(origin).st_mtime_ns
    except OSError:
        mtime = None
    cached = _sources(ctx).get(name)
    if cached is not None and cached[0] == origin and (mtime is None or cached[1] == mtime):
        return cached[2]
    try:
        if os.path.getsize(origin) > _MAX_SOURCE:
            ctx.lost(f"notebook module {name}: its source is over {_MAX_SOURCE} bytes, not kept")
            return None
        with open(origin, encoding="utf-8") as f:
            source = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        ctx.lost(f"the source of notebook module {name} could not be kept: {exc}")
        return None
    _sources(ctx)[name] = (origin, mtime, source)
    return source


def _from_source(name: str, origin: str, source: str) -> None:
    spec = importlib.util.spec_from_loader(name, loader=None, origin=origin)
    assert spec is not None
    spec.has_location = True  # a notebook module still: its source is kept by the next checkpoint
    module = importlib.util.module_from_spec(spec)
    module.__file__ = origin
    sys.modules[name] = module
    try:
        exec(compile(source, origin, "exec"), module.__dict__)
    except BaseException:
        del sys.modules[name]
        raise


def _restore_modules(state: dict[str, Any], ctx: Context) -> None:
    failed: list[str] = []
    sources: dict[str, tuple[str, str]] = state["sources"]
    _sources(ctx).update({name: (origin, None, source) for name, (origin, source) in sources.items()})
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        for name in state["modules"]:  # sorted: a package before its submodules
            if name in sys.modules:
                continue
            try:
                importlib.import_module(name)
            except BaseException as exc:
                if name in sources and isinstance(exc, ImportError):
                    try:
                        _from_source(name, *sources[name])  # its file is not on this replica: use the copy
                        continue
                    except BaseException as exc2:
                        exc = exc2
                failed.append(f"{name} ({type(exc).__name__}: {exc})")
    if failed:
        shown = ", ".join(failed[:10]) + (f" and {len(failed) - 10} more" if len(failed) > 10 else "")
        ctx.lost(f"modules not imported again: {shown}")


MODULES = Hook(
    "sys.modules",
    fingerprint=_modules_fingerprint,
    baseline=lambda ctx: frozenset(sys.modules),
    capture=_capture_modules,
    restore=_restore_modules,
    before_variables=True,
    order=40,
    plain=True,
)

HOOKS = [MODULES]
