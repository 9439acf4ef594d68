"""bench_state's corpus report, as data: which mismatched checks it counts as explained."""

from __future__ import annotations

from loadtests.bench_state import CHECKS, corpus_report


def _report(after: dict[str, str], report: dict[str, object]) -> dict[str, object]:
    before = {label: "same" for label in CHECKS}
    names = ["a", "b", "df", "head"]
    return corpus_report(names, names, report, before, {**before, **after}, 0.1, {})


def test_documented_differences_are_explained_and_others_are_not() -> None:
    out = _report({"b.base is a": "False", "head shares df memory": "False", "a sum": "0.0"}, {"restored": ["a"]})
    assert out["checks_mismatched"] == ["b.base is a", "a sum", "head shares df memory"]
    assert out["checks_mismatched_unexplained"] == ["a sum"]
    checks = out["checks"]
    assert isinstance(checks, dict)
    assert "known difference" in checks["b.base is a"]["explained_by"]


def test_a_replayed_or_lost_variable_explains_its_checks_first() -> None:
    out = _report({"b.base is a": "False", "b values": "[]"}, {"replayed": ["b"]})
    assert out["checks_mismatched_unexplained"] == []
    checks = out["checks"]
    assert isinstance(checks, dict)
    assert checks["b values"]["explained_by"] == {"b": "replayed"}
    assert checks["b.base is a"]["explained_by"] == {"b": "replayed"}
