"""Built-in hook for IPython's display formatters: printers a library or the notebook registered
(``formatter.for_type``, ``for_type_by_name``), printers removed, formatters turned on or off."""

from __future__ import annotations

import contextlib
from typing import Any

from .hooks import Context, Hook, Parts, trait


def _formatters(shell: Any) -> dict[str, Any]:
    display = trait(shell, "display_formatter")
    found = dict(trait(display, "formatters"))
    found["ipython_display"] = trait(display, "ipython_display_formatter")
    found["mimebundle"] = trait(display, "mimebundle_formatter")
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
    display = trait(ctx.shell, "display_formatter")
    known, count, values = _formatter_values
    if known is not display or count != len(trait(display, "formatters")):
        values = []
        for f in _formatters(ctx.shell).values():
            f.enabled, f.type_printers, f.deferred_printers  # noqa: B018  # traitlets fills defaults on first read
            values.append(f._trait_values)
        _formatter_values = (display, len(trait(display, "formatters")), values)
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

HOOKS = [FORMATTERS]
