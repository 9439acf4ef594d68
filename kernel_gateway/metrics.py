"""Prometheus metrics of one replica, in a registry of its own so that several apps can share a process."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._children: dict[tuple[int, str], Any] = {}
        self.executions = Counter(
            "skg_executions", "Cells executed through the REST face", ["status"], registry=self.registry
        )
        self.execution_seconds = Histogram(
            "skg_execution_seconds",
            "Wall time of a REST execution, request to reply",
            ["mode"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ws_messages = Counter(
            "skg_ws_messages", "Kernel messages relayed over WebSockets", ["direction"], registry=self.registry
        )
        self.ws_connections = Gauge("skg_ws_connections", "Open kernel WebSockets", registry=self.registry)
        self.errors = Counter(
            "skg_http_errors", "Requests answered with an error status", ["status"], registry=self.registry
        )
        self.kernel_restarts = Counter(
            "skg_kernel_restarts", "Kernels replaced in a session", ["reason"], registry=self.registry
        )
        self.forwards = Counter(
            "skg_forwards", "Requests forwarded to the replica that owns the session", registry=self.registry
        )
        self.restores = Counter("skg_restores", "Sessions restored onto this replica", registry=self.registry)
        self.restore_seconds = Histogram(
            "skg_restore_seconds", "Time to load, verify and restore a checkpoint", buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.checkpoints = Counter(
            "skg_checkpoints", "Checkpoints taken, by whether they committed", ["status"], registry=self.registry
        )
        self.checkpoint_bytes = Histogram(
            "skg_checkpoint_written_bytes",
            "Bytes a checkpoint wrote",
            buckets=(1e3, 1e4, 6.4e4, 1e5, 1e6, 1e7, 1e8, 1e9),
            registry=self.registry,
        )
        self.checkpoint_seconds = Histogram(
            "skg_checkpoint_seconds", "Time to capture and commit a checkpoint", buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.leases = Gauge("skg_leases_held", "Session leases this replica holds", registry=self.registry)
        self.sessions = Gauge("skg_sessions", "Sessions on this replica", registry=self.registry)
        self.pool_ready = Gauge("skg_pool_ready_kernels", "Warm kernels ready in the pool", registry=self.registry)

    def labelled(self, metric: Counter | Histogram, value: str) -> Any:
        """``metric.labels(value)``, kept: prometheus-client takes a lock and builds a key on every call, and
        the per-cell metrics ask for the same few children every time (each appears once first used)."""
        key = (id(metric), value)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(value)
        return child

    def executed(self, status: str, mode: str, seconds: float) -> None:
        """One REST cell answered."""
        self.labelled(self.executions, status).inc()
        self.labelled(self.execution_seconds, mode).observe(seconds)

    # StateObserver: checkpoints and restores from every face, as they happen.
    def checkpointed(self, written_bytes: int, seconds: float, committed: bool) -> None:
        self.checkpoint_bytes.observe(written_bytes)
        self.checkpoint_seconds.observe(seconds)
        self.labelled(self.checkpoints, "committed" if committed else "pending").inc()

    def restored(self, seconds: float) -> None:
        self.restores.inc()
        self.restore_seconds.observe(seconds)

    def bind(self, sessions: Callable[[], float], pool_ready: Callable[[], float], leases: Callable[[], float]) -> None:
        """Read gauges from the live objects when scraped, rather than keeping counts in step by hand."""
        self.sessions.set_function(sessions)
        self.pool_ready.set_function(pool_ready)
        self.leases.set_function(leases)
