"""Built-in hooks for the Python runtime: hooks a notebook added, the working directory, environment variables,
``sys.path``, ``warnings`` filters, and threads (which cannot move to another kernel: they are named in the
report, not restored). Modules: ``hooks_modules``."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import threading
import warnings
from typing import Any

from .hooks import EARLY, Context, Hook, Version, added_hooks, register

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

HOOKS = [NOTEBOOK_HOOKS, CWD, ENVIRON, SYS_PATH, WARNINGS, THREADS]
assert all(h.order < EARLY for h in HOOKS if h.before_variables)
