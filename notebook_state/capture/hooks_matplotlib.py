"""Built-in hooks for matplotlib: the backend (``%matplotlib``, the inline backend with its figure formatters and
``flush_figures``) and rcParams. Both run only once matplotlib is imported."""

from __future__ import annotations

import contextlib
import io
import sys
import warnings
from typing import Any

from .hooks import Context, Hook, Version

# -- matplotlib: backend, %matplotlib, inline figure support ---------------------------------------------------


def _backend() -> str | None:
    mpl = sys.modules["matplotlib"]
    backend = dict.get(mpl.rcParams, "backend")  # not rcParams["backend"]: that would resolve (import) one
    return backend if isinstance(backend, str) else None


def _inline_state() -> str:
    inline = sys.modules.get("matplotlib_inline.backend_inline")
    support = getattr(inline, "configure_inline_support", None)
    return str(getattr(support, "current_backend", "unset"))


def _matplotlib_fingerprint(ctx: Context) -> Any:
    mpl = sys.modules["matplotlib"]
    return (
        _backend(),
        "matplotlib.pyplot" in sys.modules,
        _inline_state(),
        getattr(ctx.shell, "pylab_gui_select", None),
        dict.get(mpl.rcParams, "interactive"),
    )


def _capture_matplotlib(ctx: Context) -> dict[str, Any] | None:
    backend, pyplot, inline, gui, interactive = ctx.fingerprint
    if (not pyplot and inline == "unset" and gui is None) or ctx.fingerprint == ctx.baseline:
        return None  # no backend set up, or as in a fresh kernel (one that imports matplotlib on start)
    return {"backend": backend, "pyplot": pyplot, "inline": inline, "gui": gui, "interactive": interactive}


def _restore_matplotlib(state: dict[str, Any], ctx: Context) -> None:
    import matplotlib

    with contextlib.redirect_stdout(io.StringIO()):
        if state["gui"]:
            ctx.shell.enable_matplotlib(state["gui"])  # %matplotlib qt, ...: may fail on a headless replica
        elif state["inline"] == "inline":
            ctx.shell.enable_matplotlib("inline")  # figure formatters, flush_figures, the inline rc
        elif state["pyplot"]:
            import matplotlib.pyplot as plt

            if state["backend"]:
                plt.switch_backend(state["backend"])
    matplotlib.interactive(bool(state["interactive"]))


MATPLOTLIB = Hook(
    "matplotlib.backend",
    fingerprint=_matplotlib_fingerprint,
    baseline=_matplotlib_fingerprint,
    capture=_capture_matplotlib,
    restore=_restore_matplotlib,
    requires="matplotlib",
    order=300,
    plain=True,
)


# -- matplotlib rcParams --------------------------------------------------------------------------------------

_rc_version = Version(lambda rc: dict(dict.items(rc)))  # no rcParams.__getitem__: it resolves the backend


def _capture_rc(ctx: Context) -> dict[str, Any] | None:
    mpl = sys.modules["matplotlib"]
    orig = mpl.rcParamsOrig
    changed = {}
    for key, value in dict.items(mpl.rcParams):
        if key == "backend":
            continue
        with contextlib.suppress(Exception):
            if key not in orig or bool(dict.__getitem__(orig, key) != value):
                changed[key] = value
    return changed or None


def _restore_rc(state: dict[str, Any], ctx: Context) -> None:
    import matplotlib as mpl

    orig = mpl.rcParamsOrig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for key in dict.keys(mpl.rcParams):
            if key == "backend" or (key not in state and key not in orig):
                continue
            target = state[key] if key in state else dict.__getitem__(orig, key)
            try:
                if bool(dict.__getitem__(mpl.rcParams, key) != target):
                    mpl.rcParams[key] = target
            except Exception as exc:
                ctx.lost(f"rcParams[{key!r}]: {type(exc).__name__}: {exc}")


RC_PARAMS = Hook(
    "matplotlib.rcParams",
    fingerprint=lambda ctx: _rc_version(sys.modules["matplotlib"].rcParams),
    capture=_capture_rc,
    restore=_restore_rc,
    requires="matplotlib",
    order=310,  # after the backend, which loads the inline backend's rc
    plain=True,
)

HOOKS = [MATPLOTLIB, RC_PARAMS]
