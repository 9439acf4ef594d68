"""The compare report builder on recorded data (tests/data/compare/: the results and raw samples of a real
``skg-compare --quick`` run): report.md and its plots are built from the data alone, and say what it says."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from loadtests.compare.__main__ import build_report
from loadtests.compare.details import detail_tables
from loadtests.compare.locust_run import read_samples
from loadtests.compare.report import make_report
from loadtests.compare.summary import STUDY, summary_rows

DATA = Path(__file__).resolve().parent / "data" / "compare"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def recorded(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    folder = tmp_path / "report"
    shutil.copytree(DATA, folder)
    return folder, json.loads((folder / "results.json").read_text())


def test_report_and_plots_from_recorded_data(recorded: tuple[Path, dict[str, Any]]) -> None:
    folder, results = recorded
    build_report(folder, results)
    report = (folder / "report.md").read_text()
    for png in ("latency_distribution.png", "latency_over_time.png", "memory_vs_users.png", "trace.png"):
        data = (folder / png).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, png  # drawn, not an empty canvas
        assert f"![{png}]({png})" in report
    # The summary table: the study's published figures beside this run's, one column per model.
    header = next(line for line in report.splitlines() if line.startswith("|  | study: JupyterHub"))
    assert header.count("|") == 7
    assert "| Cold start (no process to first result) | Higher | ~3.2 s (pods start ~3x faster) |" in report
    models = results["models"]
    for key, model in models.items():
        cold = next(iter(model["starts"].values()))["cold_start_s"]
        assert f"{cold['p50']:g} s (p90 {cold['p90']:g}, n={cold['n']})" in report, key
    state = next(line for line in report.splitlines() if line.startswith("| State after idle |"))
    cells = [c.strip() for c in state.strip("|").split("|")]
    assert cells[3].startswith("after cold start **lost**") and cells[4].startswith("after cold start **lost**")
    assert cells[5].startswith("after cold start **kept**")
    assert f"commit `{results['environment']['commit']}`" in report and "--quick" in report
    assert "stand-in" in report and "## Caveats" in report


def test_summary_rows_follow_the_data(recorded: tuple[Path, dict[str, Any]]) -> None:
    _, results = recorded
    rows = summary_rows(results)
    assert [r[0] for r in rows] == [
        "Cold start (no process to first result)",
        "Warm start / warm latency",
        "Scale to zero",
        "Resource efficiency",
        "State after idle",
        "Setup complexity",
    ]
    assert all(len(r) == 3 + len(results["models"]) for r in rows)
    assert rows[1][1:3] == list(STUDY["warm"])
    changed = copy.deepcopy(results)
    first = next(iter(changed["models"]["gateway"]["starts"].values()))
    first["cold_start_s"] = {"n": 3, "p50": 1.25, "p90": 2.5, "p99": 2.9, "min": 1.0, "max": 3.0}
    first["state_back"], first["cold_starts"] = 2, 3
    row = summary_rows(changed)
    assert row[0][-1] == "1.25 s (p90 2.5, n=3)" and "mixed (2/3 kept)" in row[4][-1]


def test_a_failed_or_missing_model_is_reported(recorded: tuple[Path, dict[str, Any]]) -> None:
    _, results = recorded
    partial = copy.deepcopy(results)
    del partial["models"]["peruser"]
    partial["failed"] = {"peruser": "server-probe did not answer http://127.0.0.1:1/api/status within 120 s"}
    report = make_report(partial, [])
    header = next(line for line in report.splitlines() if line.startswith("|  | study: JupyterHub"))
    assert header.count("|") == 6 and "per-user" not in header
    assert "**peruser failed in this run:**" in report and "did not answer" in report
    assert "## Plots" not in report


def test_recorded_samples_are_what_the_figures_came_from() -> None:
    results = json.loads((DATA / "results.json").read_text())
    started, rows = read_samples(DATA / "locust_gateway_samples.csv")
    assert started == pytest.approx(results["models"]["gateway"]["load"]["started"])
    steady = results["models"]["gateway"]["load"]["phases"]["steady"]
    warm = [r for r in rows if r.name == "warm execute" and r.ok and started + steady[0] <= r.t < started + steady[1]]
    assert len(warm) == results["models"]["gateway"]["load"]["warm_latency_ms"]["n"]


def test_a_shortened_night_is_said_and_costed(recorded: tuple[Path, dict[str, Any]]) -> None:
    folder, results = recorded
    assert "full-length night" not in "\n".join(detail_tables(results))  # this run's night was not shortened
    changed = copy.deepcopy(results)
    changed["plan"] |= {"day": [1.0, 0.0, 0.0, 1.0], "day_hours": 4, "hour": 3.0, "night_hour": 1.0}
    models = changed["models"]
    models["gateway"]["idle"]["no_users"] = {"pss_mb": 512.0, "servers": 0, "processes": 3}
    models["dedicated"]["idle"]["no_users"] = {"pss_mb": 256.0, "servers": 0, "processes": 2}
    models["gateway"]["load"]["trace_night"] = {"seconds": 2.0, "zero_after_s": 1.5}
    models["dedicated"]["load"]["trace_night"] = {"seconds": 2.0, "zero_after_s": None}
    models["peruser"]["load"].pop("trace_night", None)
    trace = next(t for t in detail_tables(changed) if t.startswith("### The daily trace"))
    assert "2 s in all, 4 s shorter than at the day's scale" in trace

    def cells(label: str) -> list[str]:
        row = next(line for line in trace.splitlines() if label in line)
        return [c.strip() for c in row.strip("|").split("|")][1:]

    assert cells("nothing up during the night") == ["**not within the night** (2 s)", "—", "after 1.5 s of 2"]
    # Only a model that got to its floor is costed at it (the dedicated one never did, here).
    assert cells("full-length night would add (4 s") == ["—", "—", "+2.00"]
    build_report(folder, changed)  # the plot draws the users' hours at their own lengths
    assert (folder / "trace.png").read_bytes().startswith(PNG)
