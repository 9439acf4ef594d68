"""Built-in hooks for IPython's own state: extensions (``%load_ext``), ``%config``, magics the notebook defined,
line magics with a lasting effect (replayed), and display formatters registered by libraries or the notebook.

``%env`` and ``%cd`` need no hook of their own: they change ``os.environ`` and the working directory, which
``hooks_runtime`` restores. The matplotlib backend is in ``hooks_libraries``; In/Out in ``hooks_history``.
"""

from __future__ import annotations

import ast
import contextlib
import io
from collections.abc import Iterable
from typing import Any

from .hooks import Context, Hook, Parts, Same


def _trait(obj: Any, name: str) -> Any:
    """A traitlets attribute read from the instance's value dict: the descriptor costs a microsecond a read,
    and the formatters' fingerprint reads three dozen of them after every cell."""
    values = getattr(obj, "_trait_values", None)
    if isinstance(values, dict) and name in values:
        return values[name]
    return getattr(obj, name)


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
    manager = _trait(ctx.shell, "extension_manager")
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
    fingerprint=lambda ctx: Same(_trait(ctx.shell, "config")),
    baseline=lambda ctx: _plain(ctx.shell.config),
    capture=_capture_config,
    restore=_restore_config,
    order=220,
)


# -- magics defined by the notebook ------------------------------------------------------------------------


def _magic_dicts(shell: Any) -> Any:
    return _trait(_trait(shell, "magics_manager"), "magics")


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


# -- display formatters ------------------------------------------------------------------------------------


def _formatters(shell: Any) -> dict[str, Any]:
    display = _trait(shell, "display_formatter")
    found = dict(_trait(display, "formatters"))
    found["ipython_display"] = _trait(display, "ipython_display_formatter")
    found["mimebundle"] = _trait(display, "mimebundle_formatter")
    return found


def _type_key(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _formatter_snapshot(shell: Any) -> dict[str, Any]:
    return {
        mime: (dict(f.type_printers), dict(f.deferred_printers), bool(f.enabled))
        for mime, f in _formatters(shell).items()
    }


_formatter_values: tuple[Any, int, list[dict[str, Any]]] = (None, 0, [])


def _formatters_fingerprint(ctx: Context) -> tuple[Any, ...]:
    global _formatter_values
    display = _trait(ctx.shell, "display_formatter")
    known, count, values = _formatter_values
    if known is not display or count != len(_trait(display, "formatters")):
        values = []
        for f in _formatters(ctx.shell).values():
            f.enabled, f.type_printers, f.deferred_printers  # noqa: B018  # traitlets fills defaults on first read
            values.append(f._trait_values)
        _formatter_values = (display, len(_trait(display, "formatters")), values)
    out: list[Any] = []
    for tv in values:
        out += (tv["enabled"], *tv["type_printers"].values(), None, *tv["deferred_printers"].values(), None)
    return tuple(out)


def _capture_formatters(ctx: Context) -> Parts | None:
    base: dict[str, Any] = ctx.baseline or {}
    parts = Parts()
    for mime, f in _formatters(ctx.shell).items():
        types, names, enabled = base.get(mime, ({}, {}, f.enabled))
        for cls, func in f.type_printers.items():
            # IPython moves a deferred printer into type_printers the first time its type is shown.
            if types.get(cls) is not func and names.get((cls.__module__, cls.__name__)) is not func:
                parts[f"{mime}|{_type_key(cls)}"] = ("type", mime, cls, func)
        for key, func in f.deferred_printers.items():
            if names.get(key) is not func:
                parts[f"{mime}|{key[0]}.{key[1]}"] = ("name", mime, key, func)
        present = {(c.__module__, c.__name__) for c in f.type_printers} | set(f.deferred_printers)
        for cls in types.keys() - f.type_printers.keys():
            parts[f"{mime}|-{_type_key(cls)}"] = ("pop", mime, cls, None)
        for key in names.keys() - present:
            parts[f"{mime}|-{key[0]}.{key[1]}"] = ("pop", mime, f"{key[0]}.{key[1]}", None)
        if bool(f.enabled) != enabled:
            parts[f"{mime}|enabled"] = ("enabled", mime, bool(f.enabled), None)
    return parts or None


def _restore_formatters(state: dict[str, tuple[Any, ...]], ctx: Context) -> None:
    formatters = _formatters(ctx.shell)
    for key, (what, mime, target, func) in state.items():
        f = formatters.get(mime)
        if f is None:
            ctx.lost(f"display formatter {key}: no {mime} formatter in this kernel")
        elif what == "type":
            f.for_type(target, func)
        elif what == "name":
            f.for_type_by_name(target[0], target[1], func)
        elif what == "pop":
            with contextlib.suppress(KeyError):
                f.pop(target)
        else:
            f.enabled = target


FORMATTERS = Hook(
    "ipython.formatters",
    fingerprint=_formatters_fingerprint,
    baseline=lambda ctx: _formatter_snapshot(ctx.shell),
    capture=_capture_formatters,
    restore=_restore_formatters,
    order=320,  # after matplotlib's backend, which registers its figure formatters itself
)

HOOKS = [EXTENSIONS, CONFIG, MAGICS, MAGIC_LINES, FORMATTERS]
