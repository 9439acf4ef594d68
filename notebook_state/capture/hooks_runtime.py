"""Built-in hooks for the Python runtime: hooks a notebook added, the working directory, environment variables,
``sys.path``, modules (the notebook's own included), ``warnings`` filters, and threads (which cannot move to
another kernel: they are named in the report, not restored)."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import os
import site
import sys
import sysconfig
import threading
import warnings
from typing import Any

from .hooks import EARLY, Context, Hook, Version, added_hooks, register

_MAX_SOURCE = 1024 * 1024  # a notebook module's source is kept (to re-create it elsewhere) up to this size


# -- hooks added by a notebook --------------------------------------------------------------------------------


def _restore_hooks(state: list[Hook], ctx: Context) -> None:
    for hook in state:
        register(hook)


NOTEBOOK_HOOKS = Hook(
    "notebook_state.hooks",
    fingerprint=lambda ctx: added_hooks(),
    capture=lambda ctx: list(added_hooks()) or None,
    restore=_restore_hooks,
    before_variables=True,
    order=0,
)


# -- working directory --------------------------------------------------------------------------------------


def _cwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:  # the directory was deleted under the kernel
        return None


def _dir_hist(ctx: Context) -> list[str]:
    hist = ctx.ns.get("_dh")  # the shell's dir_hist, which %cd appends to
    return hist if isinstance(hist, list) else []


def _capture_cwd(ctx: Context) -> dict[str, Any] | None:
    cwd, hist = _cwd(), _dir_hist(ctx)
    if cwd == ctx.baseline and len(hist) <= 1:
        return None
    if cwd is None:
        ctx.lost("the working directory was deleted")
    return {"cwd": cwd, "dir_hist": list(hist)}


def _restore_cwd(state: dict[str, Any], ctx: Context) -> None:
    hist = _dir_hist(ctx)
    hist[:] = state["dir_hist"] or hist
    cwd = state["cwd"]
    if cwd is not None:
        if not os.path.isdir(cwd):
            # A directory in the kernel's private /tmp (the sandbox's) stays behind with the old kernel: make it
            # again so relative paths work, and say that what was in it did not come along.
            os.makedirs(cwd)
            ctx.lost(f"the working directory {cwd} was not on this replica: it was created empty")
        os.chdir(cwd)


CWD = Hook(
    "cwd",
    fingerprint=lambda ctx: (_cwd(), len(_dir_hist(ctx))),
    baseline=lambda ctx: _cwd(),
    capture=_capture_cwd,
    restore=_restore_cwd,
    before_variables=True,
    order=10,
    plain=True,
)


# -- environment variables ---------------------------------------------------------------------------------

_env_version = Version()


def _capture_env(ctx: Context) -> dict[str, Any] | None:
    base: dict[str, str] = ctx.baseline or {}
    env = dict(os.environ)
    changed = {k: v for k, v in env.items() if base.get(k) != v}
    unset = sorted(k for k in base if k not in env)
    return {"set": changed, "unset": unset} if changed or unset else None


def _restore_env(state: dict[str, Any], ctx: Context) -> None:
    os.environ.update(state["set"])
    for key in state["unset"]:
        os.environ.pop(key, None)


ENVIRON = Hook(
    "os.environ",
    # os.environ._data is the dict os.environ mutates (putenv goes with it): compared at C speed.
    fingerprint=lambda ctx: _env_version(getattr(os.environ, "_data", os.environ)),
    baseline=lambda ctx: dict(os.environ),
    capture=_capture_env,
    restore=_restore_env,
    before_variables=True,
    order=20,
    plain=True,
)


# -- sys.path ------------------------------------------------------------------------------------------------


def _capture_path(ctx: Context) -> dict[str, Any] | None:
    path = tuple(sys.path)
    if path == ctx.baseline:
        return None
    return {"path": list(path), "baseline": list(ctx.baseline or ())}


def _restore_path(state: dict[str, Any], ctx: Context) -> None:
    saved: list[str] = state["path"]
    removed = set(state["baseline"]) - set(saved)
    # Entries of this kernel that the notebook's kernel did not have (another image, another layout) stay.
    extra = [p for p in sys.path if p not in saved and p not in removed]
    sys.path[:] = saved + extra
    importlib.invalidate_caches()


SYS_PATH = Hook(
    "sys.path",
    fingerprint=lambda ctx: tuple(sys.path),
    baseline=lambda ctx: tuple(sys.path),
    capture=_capture_path,
    restore=_restore_path,
    before_variables=True,
    order=30,
    plain=True,
)


# -- modules -------------------------------------------------------------------------------------------------

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


def _is_notebook_file(origin: str) -> bool:
    return origin.endswith(".py") and not os.path.realpath(origin).startswith(_libraries())


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
    for name, module in list(sys.modules.items()):
        if name in base or name == "__main__":
            continue
        spec = getattr(module, "__spec__", None)
        if spec is None or spec.name != name:  # made at run time, or an alias: cannot be imported by name
            continue
        names.append(name)
        origin = spec.origin
        if isinstance(origin, str) and spec.has_location and _is_notebook_file(origin):
            own[name] = origin
            if not spec.submodule_search_locations:  # a package is more than one file: not kept
                source = _source(name, origin, ctx)
                if source is not None:
                    sources[name] = (origin, source)
    kept = _sources(ctx)
    for gone in kept.keys() - own.keys():
        del kept[gone]
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


# -- warnings filters --------------------------------------------------------------------------------------


def _restore_warnings(state: list[Any], ctx: Context) -> None:
    filters: list[Any] = warnings.filters  # type: ignore[assignment]
    filters[:] = state
    warnings._filters_mutated()  # type: ignore[attr-defined]  # the C module caches the filters otherwise


WARNINGS = Hook(
    "warnings.filters",
    fingerprint=lambda ctx: tuple(warnings.filters),
    baseline=lambda ctx: tuple(warnings.filters),
    capture=lambda ctx: None if tuple(warnings.filters) == ctx.baseline else list(warnings.filters),
    restore=_restore_warnings,
    order=900,  # last but the generators: imports and extensions restored before may add filters
)


# -- threads -------------------------------------------------------------------------------------------------


def _notebook_threads(ctx: Context) -> list[str]:
    names = []
    for thread in threading.enumerate():
        if thread.ident in (ctx.baseline or ()) or not thread.is_alive():
            continue
        target = getattr(thread, "_target", None)
        if getattr(target, "__module__", None) == "__main__" or type(thread).__module__ == "__main__":
            names.append(thread.name)
    return sorted(names)


def _restore_threads(state: list[str], ctx: Context) -> None:
    for name in state:
        ctx.lost(f"thread {name!r} was running: a thread cannot move to another kernel; run its cell again")


THREADS = Hook(
    "threads",
    fingerprint=lambda ctx: tuple(threading._active),  # type: ignore[attr-defined]
    baseline=lambda ctx: frozenset(t.ident for t in threading.enumerate()),
    capture=lambda ctx: _notebook_threads(ctx) or None,
    restore=_restore_threads,
    order=990,
    plain=True,
)

HOOKS = [NOTEBOOK_HOOKS, CWD, ENVIRON, SYS_PATH, MODULES, WARNINGS, THREADS]
assert all(h.order < EARLY for h in HOOKS if h.before_variables)
