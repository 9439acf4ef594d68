"""Kernel-side capture and restore of a notebook's namespace.

Runs INSIDE the ipykernel process and imports nothing from the service (``kernel_gateway``) or the rest of
``notebook_state`` but the constants of ``notebook_state.types``: the kernel never holds service secrets. The
service calls, in silent executes::

    __import__('notebook_state.capture').capture.install()       # once, right after the kernel starts
    __import__('notebook_state.capture').capture.checkpoint(dir) # after each cell
    __import__('notebook_state.capture').capture.restore(dir)    # on a fresh kernel, to take a session over

Modules: ``analysis`` (what a cell could touch), ``groups`` (alias groups), ``hashing``, ``serialize`` (pickling
a group), ``blob`` (its file format), ``replay`` (unserialisable variables), ``tracker`` (events + incremental
checkpoint) and ``restorer`` (restore; not named ``restore``, which would shadow the function below once
imported), ``outbox`` (where a checkpoint goes: files, or the cell's reply). Process state that is not
a variable (random generators, ``sys.path``, IPython and library settings) goes through the hook registry of
``hooks`` (built-ins in ``hooks_runtime``, ``hooks_random``, ``hooks_ipython``, ``hooks_history``,
``hooks_libraries``, ``hooks_matplotlib``), run by ``process_state``. docs/process-state.md describes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import traceback
from typing import Any

from .outbox import REPLY_KEY, REPLY_LIMIT
from .tracker import Tracker

__all__ = ["checkpoint", "install", "restore", "tracker_of"]

_ATTR = "_notebook_state_tracker"


def _shell(shell: Any) -> Any:
    if shell is None:
        from IPython import get_ipython

        shell = get_ipython()
        if shell is None:
            raise RuntimeError("notebook_state.capture needs an IPython shell")
    return shell


def tracker_of(shell: Any = None) -> Tracker:
    """The shell's tracker, installing it first if needed."""
    shell = _shell(shell)
    tracker = getattr(shell, _ATTR, None)
    if isinstance(tracker, Tracker) and tracker.ns is shell.user_ns:
        return tracker
    old = tracker if isinstance(tracker, Tracker) else None
    if old is not None:  # the shell's namespace was replaced: start over (the process is the same)
        _unregister(shell, old)
    tracker = Tracker(shell)
    if old is not None:
        tracker.process = old.process
    shell.events.register("pre_execute", tracker.pre_execute)
    shell.events.register("pre_run_cell", tracker.pre_run_cell)
    shell.events.register("post_run_cell", tracker.post_run_cell)
    setattr(shell, _ATTR, tracker)
    return tracker


def _unregister(shell: Any, tracker: Tracker) -> None:
    callbacks = (("pre_execute", tracker.pre_execute), ("pre_run_cell", tracker.pre_run_cell),
                 ("post_run_cell", tracker.post_run_cell))  # fmt: skip
    for event, callback in callbacks:
        with contextlib.suppress(ValueError):
            shell.events.unregister(event, callback)


def install(shell: Any = None, auto_dir: str | None = None, process: bool = True, reply: bool = False) -> None:
    """Install the tracker on ``shell`` (``get_ipython()`` by default). Idempotent.

    With ``auto_dir``, every cell's checkpoint is written into ``auto_dir/<seq>/`` as the cell ends (in
    post_run_cell, before the kernel replies), so the service needs no extra request to get it. With ``reply``
    too (an ipykernel kernel), a small checkpoint travels instead in the metadata of the cell's
    ``execute_reply``, under ``notebook_state.types.REPLY_KEY``: whoever reads the replies must take it out.
    ``process=False`` checkpoints variables only, none of the process state of ``hooks`` (benchmarks compare).
    """
    from . import tracker as tracker_module

    shell = _shell(shell)
    if auto_dir is not None:
        os.makedirs(auto_dir, mode=0o700, exist_ok=True)
        tracker_module.AUTO_DIR = auto_dir
        kernel = getattr(shell, "kernel", None)
        if reply and kernel is not None and hasattr(kernel, "finish_metadata"):
            _reply_with_checkpoints(shell, kernel)
            tracker_module.AUTO_REPLY_LIMIT = REPLY_LIMIT
    tracker_of(shell).process.enabled = process


def _reply_with_checkpoints(shell: Any, kernel: Any) -> None:
    # ipykernel asks ``finish_metadata`` for the metadata of every execute_reply, right after the cell ran (and
    # so after post_run_cell): its documented place for what a reply adds.
    original = kernel.finish_metadata
    if getattr(original, "_notebook_state", False):
        return

    def finish_metadata(parent: Any, metadata: dict[str, Any], reply_content: Any) -> dict[str, Any]:
        metadata = original(parent, metadata, reply_content)
        tracker = getattr(shell, _ATTR, None)
        found = tracker.take_reply() if isinstance(tracker, Tracker) else None
        if found is not None:
            metadata[REPLY_KEY] = found
        return metadata

    finish_metadata._notebook_state = True  # type: ignore[attr-defined]
    kernel.finish_metadata = finish_metadata


def checkpoint(out_dir: str, shell: Any = None, *, full: bool = False) -> None:
    """Write ``manifest.json`` and the blobs of changed groups into ``out_dir``. Never raises.

    ``full=True`` writes every group's blob (use it when an earlier checkpoint was not committed).
    """
    try:
        tracker_of(shell).checkpoint(out_dir, full=full)
    except Exception as exc:
        _write_error(out_dir, exc)


def restore(in_dir: str, shell: Any = None) -> None:
    """Restore ``in_dir`` (manifest + every listed blob) into the shell; writes ``report.json``. Never raises."""
    try:
        from .restorer import restore_into

        restore_into(tracker_of(shell), in_dir)
    except Exception as exc:
        _write_error(in_dir, exc, "report.json")


def _write_error(directory: str, exc: BaseException, name: str = "errors.json") -> None:
    try:
        with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
            json.dump({"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}, f)
    except Exception:
        pass
