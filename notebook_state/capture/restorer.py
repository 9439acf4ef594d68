"""Restore a checkpoint (manifest + every group's blob) into a kernel's user namespace; never raises."""

from __future__ import annotations

import importlib
import json
import os
import traceback
from typing import Any

from . import replay
from .serialize import load_blob
from .tracker import Tracker, _error, _write_json


def restore_into(tracker: Tracker, in_dir: str) -> dict[str, Any]:
    """Load groups, re-import modules, replay what can be replayed; return (and write) the report."""
    shell, ns = tracker.shell, tracker.ns
    report: dict[str, Any] = {"restored": [], "replayed": [], "modules": [], "lost": {}, "execution_count": None}
    report["process"] = {"restored": [], "lost": {}}
    lost: dict[str, str] = report["lost"]
    try:
        with open(os.path.join(in_dir, "manifest.json"), encoding="utf-8") as f:
            manifest = json.load(f)
        if manifest.get("format") != 1:
            raise ValueError(f"unsupported manifest format {manifest.get('format')!r}")
    except Exception as exc:
        report["error"] = f"manifest: {_error(exc)}"
        _write_json(os.path.join(in_dir, "report.json"), report)
        return report
    _process(tracker, in_dir, manifest, True, report)  # working directory, sys.path, modules: what unpickling needs
    restored: set[str] = set()
    for gid, group in manifest.get("groups", {}).items():
        if "process" in group:
            continue
        names = list(group.get("names", []))
        try:
            objs = load_blob(os.path.join(in_dir, f"{gid}.bin"), ns)
            missing = set(names) - set(objs)
            if missing:
                raise ValueError(f"blob lacks {sorted(missing)}")
            for name in names:
                ns[name] = objs[name]
            restored.update(names)
        except Exception as exc:
            for name in names:
                lost[name] = f"group {gid} could not be loaded: {_error(exc)}"
    modules: set[str] = set()
    for alias, module in manifest.get("modules", {}).items():
        try:
            ns[alias] = importlib.import_module(module)
            modules.add(alias)
        except BaseException as exc:
            lost[alias] = f"import {module} failed: {_error(exc)}"
    try:
        replayed, replay_lost = replay.run(dict(manifest.get("replay", {})), ns)
    except Exception as exc:
        replayed, replay_lost = [], {n: f"replay failed: {_error(exc)}" for n in manifest.get("replay", {})}
    lost.update(replay_lost)
    for name, reason in manifest.get("lost", {}).items():
        lost.setdefault(name, reason)
    _process(tracker, in_dir, manifest, False, report)
    count = int(manifest.get("execution_count", 0))
    try:
        shell.execution_count = count + 1
    except Exception as exc:
        report["error"] = f"execution_count: {_error(exc)}"
    try:
        tracker.adopt(manifest, restored, set(replayed), modules)
        tracker.process.adopt(manifest, report["process"]["restored"])
    except Exception as exc:
        tracker.conservative = True
        report["error"] = f"tracker: {_error(exc)}\n{traceback.format_exc()}"
    report.update(restored=sorted(restored), replayed=list(replayed), modules=sorted(modules), execution_count=count)
    _write_json(os.path.join(in_dir, "report.json"), report)
    return report


def _process(tracker: Tracker, in_dir: str, manifest: dict[str, Any], early: bool, report: dict[str, Any]) -> None:
    try:
        tracker.process.restore(in_dir, manifest, early, report["process"])
    except Exception as exc:
        report["process"]["lost"]["*"] = f"process state not restored: {_error(exc)}\n{traceback.format_exc()}"
