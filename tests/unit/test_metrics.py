"""The per-cell metrics keep their labelled children, and count as prometheus-client would."""

from __future__ import annotations

from prometheus_client import generate_latest

from kernel_gateway.metrics import Metrics


def test_cells_and_checkpoints_are_counted_under_their_labels() -> None:
    m = Metrics()
    assert b'skg_executions_total{status="ok"}' not in generate_latest(m.registry)  # a series appears when used
    for status in ("ok", "ok", "error"):
        m.executed(status, "json", 0.004)
    m.executed("ok", "stream", 0.2)
    m.checkpointed(1200, 0.0004, committed=True)
    m.checkpointed(0, 0.0001, committed=False)
    text = generate_latest(m.registry).decode()
    assert 'skg_executions_total{status="ok"} 3.0' in text
    assert 'skg_executions_total{status="error"} 1.0' in text
    assert 'skg_execution_seconds_count{mode="json"} 3.0' in text
    assert 'skg_execution_seconds_bucket{le="0.005",mode="json"} 3.0' in text
    assert 'skg_execution_seconds_count{mode="stream"} 1.0' in text
    assert 'skg_checkpoints_total{status="committed"} 1.0' in text
    assert 'skg_checkpoints_total{status="pending"} 1.0' in text
    assert m.labelled(m.executions, "ok") is m.labelled(m.executions, "ok")
    assert m.labelled(m.executions, "ok") is not m.labelled(m.checkpoints, "ok")
