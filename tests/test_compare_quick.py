"""``skg-compare --quick`` end to end: the real JupyterHub with its idle culler, per-user Jupyter servers behind
the scale-to-zero stand-in, gateway replicas behind nginx with a real redis-server, all driven by locust; then
the report folder, and nothing left running. Figures are not asserted (tiny samples on a shared machine); what
each model does to a user's variables after a cold start is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"dedicated", "peruser", "gateway"}

pytestmark = pytest.mark.timeout(600)


def _ours(began: float, root: Path) -> list[str]:
    """Processes started since ``began`` that belong to this run: their command line or working directory is
    under ``root`` (the run's TMPDIR, so its work folder too)."""
    found = []
    for p in psutil.process_iter(["cmdline", "create_time", "cwd"]):
        try:
            if (p.info["create_time"] or 0) < began:
                continue
            text = " ".join(p.info["cmdline"] or []) + " " + (p.info["cwd"] or "")
            if str(root) in text:
                found.append(f"{p.pid} {text[:200]}")
        except psutil.Error:
            continue
    return found


def test_quick_comparison_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "report"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SKG_", "JUPYTER", "JPY_", "KERNEL_"))}
    (tmp_path / "tmp").mkdir()
    env["TMPDIR"] = str(tmp_path / "tmp")  # the run's work folder lands here: its processes are told apart by it
    began = time.time()
    cmd = [str(Path(sys.executable).parent / "skg-compare"), "--quick", "--out", str(out), "--seed", "11"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=540)
    log = done.stderr
    (ROOT / "test-output").mkdir(exist_ok=True)
    (ROOT / "test-output" / "test_compare_quick.log").write_text(log)
    assert done.returncode == 0, log[-4000:]
    assert "model 3/3: gateway" in log  # progress is shown while it runs
    assert done.stdout.strip().endswith("report.md")

    results = json.loads((out / "results.json").read_text())
    assert set(results["models"]) == MODELS and results["quick"] is True and not results.get("failed")
    assert results["environment"]["commit"] and results["environment"]["cpus"]
    for key, model in results["models"].items():
        start = next(iter(model["starts"].values()))
        assert start["cold_start_s"]["n"] == start["cold_starts"] >= 1, key
        assert start["warm_start_ms"]["n"] >= 1, key
        # Idle: every unit the model scales was up with an idle user, and none after the idle action.
        assert model["idle"]["levels"]["1"]["servers"] >= 1, key
        assert model["idle"]["after_idle_action"]["servers"] == 0, key
        assert model["load"]["trace_cost"]["samples"] >= 2, key
        assert (out / f"locust_{key}.html").stat().st_size > 0 and (out / f"locust_{key}_stats.csv").exists()
        assert (out / f"resources_{key}.csv").exists()
    # After every unit was culled or scaled to zero: the per-user models lost the variables; the gateway kept them.
    starts = {k: next(iter(m["starts"].values())) for k, m in results["models"].items()}
    assert starts["dedicated"]["state_back"] == 0 and starts["peruser"]["state_back"] == 0
    assert starts["gateway"]["state_back"] == starts["gateway"]["cold_starts"]
    gateway = results["models"]["gateway"]["load"]
    assert gateway["warm_latency_ms"]["n"] >= 1 and gateway["all_users"]["cells_failed"] == 0

    report = (out / "report.md").read_text()
    for row in ("Cold start (no process to first result)", "Scale to zero", "State after idle", "Setup complexity"):
        assert f"| {row} |" in report
    assert "(c) stateless gateway (this project)" in report and "stand-in" in report
    for png in ("latency_distribution.png", "latency_over_time.png", "memory_vs_users.png", "trace.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({png})" in report

    deadline = time.monotonic() + 30  # a stopped process may take a moment to be reaped
    while _ours(began, tmp_path) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _ours(began, tmp_path)
