"""Prometheus metrics of one replica, in a registry of its own so that several apps can share a process."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
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
        self.sessions = Gauge("skg_sessions", "Sessions on this replica", registry=self.registry)
        self.pool_ready = Gauge("skg_pool_ready_kernels", "Warm kernels ready in the pool", registry=self.registry)

    def bind(self, sessions: Callable[[], float], pool_ready: Callable[[], float]) -> None:
        """Read gauges from the live objects when scraped, rather than keeping counts in step by hand."""
        self.sessions.set_function(sessions)
        self.pool_ready.set_function(pool_ready)
