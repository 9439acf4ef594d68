"""Built-in hooks for libraries' global options: numpy's print and floating-point error options, pandas options,
scikit-learn's ``set_config``. Each runs only once its library is imported (matplotlib: ``hooks_matplotlib``;
numpy's global generator: ``hooks_random``)."""

from __future__ import annotations

import contextlib
import sys
import warnings
from typing import Any

from .hooks import Context, Hook, Same, Version

# -- numpy print and floating-point error options ---------------------------------------------------------


def _np_options() -> tuple[dict[str, Any], dict[str, str]]:
    np = sys.modules["numpy"]
    return np.get_printoptions(), np.geterr()


def _np_options_fingerprint(ctx: Context) -> Any:
    # numpy 2 keeps both in ContextVars whose value is replaced on every set_printoptions / seterr.
    printing = getattr(sys.modules.get("numpy._core.arrayprint"), "format_options", None)
    errors = getattr(sys.modules.get("numpy._core._multiarray_umath"), "_extobj_contextvar", None)
    if printing is None or errors is None:  # numpy 1: plain values
        return _np_options()
    return (Same(printing.get()), Same(errors.get()))


def _capture_np_options(ctx: Context) -> dict[str, Any] | None:
    printing, errors = _np_options()
    base: tuple[dict[str, Any], dict[str, str]] = ctx.baseline or ({}, {})
    base_printing, base_errors = base
    changed = {k: v for k, v in printing.items() if k not in base_printing or base_printing[k] != v}
    state = {"print": changed, "err": errors if errors != base_errors else None}
    return state if changed or state["err"] else None


def _restore_np_options(state: dict[str, Any], ctx: Context) -> None:
    np = sys.modules.get("numpy") or __import__("numpy")
    if state["print"]:
        np.set_printoptions(**state["print"])
    if state["err"]:
        np.seterr(**state["err"])


NUMPY_OPTIONS = Hook(
    "numpy.options",
    fingerprint=_np_options_fingerprint,
    baseline=lambda ctx: _np_options(),
    capture=_capture_np_options,
    restore=_restore_np_options,
    requires="numpy",
    order=610,
)


# -- pandas options -----------------------------------------------------------------------------------------


def _pandas_config() -> Any:
    return sys.modules["pandas"]._config.config


def _nested_copy(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _nested_copy(v) if isinstance(v, dict) else v for k, v in d.items()}


_pandas_version = Version(_nested_copy)


def _capture_pandas(ctx: Context) -> dict[str, Any] | None:
    config = _pandas_config()
    changed = {}
    for key, option in config._registered_options.items():
        if key in config._deprecated_options:
            continue
        value = config.get_option(key)
        if value is not option.defval:
            with contextlib.suppress(Exception):
                if value != option.defval:
                    changed[key] = value
    return changed or None


def _restore_pandas(state: dict[str, Any], ctx: Context) -> None:
    config = _pandas_config()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for key, option in config._registered_options.items():
            if key in config._deprecated_options:
                continue
            target = state.get(key, option.defval)
            try:
                if config.get_option(key) != target:
                    config.set_option(key, target)
            except Exception as exc:
                ctx.lost(f"pandas option {key}: {type(exc).__name__}: {exc}")


PANDAS_OPTIONS = Hook(
    "pandas.options",
    fingerprint=lambda ctx: _pandas_version(_pandas_config()._global_config),
    capture=_capture_pandas,
    restore=_restore_pandas,
    requires="pandas",
    order=600,
)


# -- scikit-learn's global configuration ------------------------------------------------------------------


def _sklearn_config() -> dict[str, Any]:
    config: dict[str, Any] = sys.modules["sklearn"].get_config()
    return config


SKLEARN_CONFIG = Hook(
    "sklearn.config",
    fingerprint=lambda ctx: _sklearn_config(),
    baseline=lambda ctx: _sklearn_config() if "sklearn" in sys.modules else {},
    capture=lambda ctx: {k: v for k, v in _sklearn_config().items() if (ctx.baseline or {}).get(k) != v} or None,
    restore=lambda state, ctx: sys.modules["sklearn"].set_config(**state),
    requires="sklearn",
    order=620,
    plain=True,
)


HOOKS = [NUMPY_OPTIONS, PANDAS_OPTIONS, SKLEARN_CONFIG]
