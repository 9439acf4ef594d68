"""Built-in hooks for IPython's own state: extensions (``%load_ext``), ``%config``, magics the notebook defined,
and line magics with a lasting effect (replayed). Display formatters: ``hooks_display``.

``%env`` and ``%cd`` need no hook of their own: they change ``os.environ`` and the working directory, which
``hooks_runtime`` restores. The matplotlib backend is in ``hooks_libraries``; In/Out in ``hooks_history``.
"""

from __future__ import annotations

import ast
import contextlib
import io
from collections.abc import Iterable
from typing import Any

from .hooks import Context, Hook, Parts, Same, trait

# Line magics whose effect lasts and that are restored by running them again, latest call first kept:
# {magic: how many leading words identify what it sets} (0: the magic has one setting, a later call replaces
# an earlier one; 1: ``%alias ll ls -l`` and ``%alias la ls -a`` are two settings). Add to it for your magics.
REPLAYED_MAGICS: dict[str, int] = {
    "autoreload": 0,
    "aimport": 1,
    "precision": 0,
    "xmode": 0,
    "pdb": 0,
    "colors": 0,
    "automagic": 0,
    "autocall": 0,
    "alias": 1,
    "unalias": 1,
}


def magic_calls(statements: Iterable[Any]) -> list[tuple[str, str]]:
    """``(magic, line)`` of the replayed line magics a transformed cell calls (IPython turns ``%xmode Plain``
    into ``get_ipython().run_line_magic('xmode', 'Plain')``)."""
    found = []
    for stmt in statements:
        for node in ast.walk(stmt.node):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "run_line_magic"
                and len(node.args) >= 2
                and all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in node.args[:2])
            ):
                name, line = node.args[0].value, node.args[1].value  # type: ignore[attr-defined]
                if name in REPLAYED_MAGICS:
                    found.append((name, line))
    return found


def note_magics(shell: Any, calls: list[tuple[str, str]], memo: dict[str, Any]) -> None:
    """Remember the replayed magics a cell ran (after it ran: ``{var}`` is expanded with the cell's values)."""
    for name, line in calls:
        if "{" in line or "$" in line:
            with contextlib.suppress(Exception):
                line = shell.var_expand(line)
        _remember(memo, name, line)


def _lines(memo: dict[str, Any]) -> dict[tuple[str, str], str]:
    """(magic, identifying words) -> line, in the order of the latest calls."""
    lines: dict[tuple[str, str], str] = memo.setdefault("lines", {})
    return lines


def _remember(memo: dict[str, Any], name: str, line: str) -> None:
    lines = _lines(memo)
    key = (name, " ".join(line.split()[: REPLAYED_MAGICS.get(name, 0)]))
    lines.pop(key, None)  # moves to the end: replayed in the order of the latest calls
    lines[key] = line


def _restore_magic_lines(state: list[tuple[str, str]], ctx: Context) -> None:
    for name, line in state:
        _remember(ctx.memo, name, line)  # so that this kernel's checkpoints carry them on
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                ctx.shell.run_line_magic(name, line)
        except Exception as exc:
            ctx.lost(f"%{name} {line}: {type(exc).__name__}: {exc}")


MAGIC_LINES = Hook(
    "ipython.magic_lines",
    fingerprint=lambda ctx: tuple(_lines(ctx.memo).items()),
    capture=lambda ctx: [(name, line) for (name, _), line in _lines(ctx.memo).items()] or None,
    restore=_restore_magic_lines,
    plain=True,
    order=230,  # after extensions: %autoreload needs %load_ext autoreload
)


# -- extensions --------------------------------------------------------------------------------------------


def _loaded(ctx: Context) -> frozenset[str]:
    manager = trait(ctx.shell, "extension_manager")
    return frozenset(getattr(manager, "loaded", ()))


def _restore_extensions(state: list[str], ctx: Context) -> None:
    for name in state:
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                result = ctx.shell.extension_manager.load_extension(name)
            if result == "no load function":
                ctx.lost(f"extension {name}: it has no load_ipython_extension function")
        except Exception as exc:
            ctx.lost(f"extension {name}: {type(exc).__name__}: {exc}")


EXTENSIONS = Hook(
    "ipython.extensions",
    fingerprint=_loaded,
    baseline=_loaded,
    capture=lambda ctx: sorted(_loaded(ctx) - (ctx.baseline or frozenset())) or None,
    restore=_restore_extensions,
    plain=True,
    order=210,
)


# -- %config -------------------------------------------------------------------------------------------------


def _plain(config: Any) -> dict[str, Any]:
    return {k: _plain(v) if isinstance(v, dict) else v for k, v in config.items()}


def _config_diff(current: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    diff: dict[str, Any] = {}
    for section, values in current.items():
        if isinstance(values, dict):
            before = base.get(section, {})
            changed = {k: v for k, v in values.items() if k not in before or before[k] != v}
            if changed:
                diff[section] = changed
    return diff


def _capture_config(ctx: Context) -> dict[str, Any] | None:
    return _config_diff(_plain(ctx.shell.config), ctx.baseline or {}) or None


def _restore_config(state: dict[str, Any], ctx: Context) -> None:
    from traitlets.config import Config

    cfg = Config(state)
    shell = ctx.shell
    # As %config does: every configurable with configurable traits takes it; the shell keeps it for the
    # configurables made later with the shell as parent (InlineBackend).
    seen: set[int] = set()
    for configurable in [shell, *shell.configurables]:
        if id(configurable) in seen or not configurable.__class__.class_traits(config=True):
            continue
        seen.add(id(configurable))
        try:
            configurable.update_config(cfg)
        except Exception as exc:
            ctx.lost(f"%config for {type(configurable).__name__}: {type(exc).__name__}: {exc}")


CONFIG = Hook(
    "ipython.config",
    # %config replaces shell.config with an updated copy (traitlets' update_config): identity is enough.
    fingerprint=lambda ctx: Same(trait(ctx.shell, "config")),
    baseline=lambda ctx: _plain(ctx.shell.config),
    capture=_capture_config,
    restore=_restore_config,
    order=220,
)


# -- magics defined by the notebook ------------------------------------------------------------------------


def _magic_dicts(shell: Any) -> Any:
    return trait(trait(shell, "magics_manager"), "magics")


def _magic_table(shell: Any) -> dict[str, Any]:
    magics = _magic_dicts(shell)
    return {f"{kind}:{name}": f for kind in ("line", "cell") for name, f in magics[kind].items()}


def _magics_fingerprint(ctx: Context) -> tuple[Any, ...]:
    magics = _magic_dicts(ctx.shell)
    return (*magics["line"].values(), None, *magics["cell"].values())


def _magic_record(kind: str, name: str, func: Any) -> tuple[Any, ...]:
    from IPython.core.magic import MagicAlias, Magics

    if isinstance(func, MagicAlias):
        return ("alias", func.magic_name, func.magic_kind, func.magic_params)
    owner = getattr(func, "__self__", None)
    if isinstance(owner, Magics):
        return ("class", type(owner))  # registered again as a class: a new instance, its own state is fresh
    return ("function", func)


def _library_closure(func: Any) -> bool:
    return getattr(func, "__module__", None) != "__main__" and "<locals>" in getattr(func, "__qualname__", "")


def _capture_magics(ctx: Context) -> Parts | None:
    base: dict[str, Any] = ctx.baseline or {}
    now = _magic_table(ctx.shell)
    parts = Parts()
    for key, func in now.items():
        if base.get(key) is not func:
            kind, name = key.split(":", 1)
            record = _magic_record(kind, name, func)
            if record[0] == "function" and key in base and _library_closure(func):
                continue  # a library made its own magic again (ScriptMagics after a %config): it will again
            parts[key] = record
    for key in base.keys() - now.keys():
        parts[key] = ("removed",)
    return parts or None


def _restore_magics(state: dict[str, tuple[Any, ...]], ctx: Context) -> None:
    shell = ctx.shell
    manager = shell.magics_manager
    for key, record in state.items():
        kind, name = key.split(":", 1)
        try:
            if record[0] == "removed":
                manager.magics[kind].pop(name, None)
            elif record[0] == "alias":
                manager.register_alias(name, record[1], record[2], record[3])
            elif record[0] == "class":
                current = getattr(manager.magics[kind].get(name), "__self__", None)
                if type(current) is not record[1]:  # an extension loaded again may have registered it already
                    shell.register_magics(record[1])
            else:
                shell.register_magic_function(record[1], "line" if kind == "line" else "cell", name)
        except Exception as exc:
            ctx.lost(f"magic {key}: {type(exc).__name__}: {exc}")


MAGICS = Hook(
    "ipython.magics",
    fingerprint=_magics_fingerprint,
    baseline=lambda ctx: _magic_table(ctx.shell),
    capture=_capture_magics,
    restore=_restore_magics,
    order=225,
)


HOOKS = [EXTENSIONS, CONFIG, MAGICS, MAGIC_LINES]
