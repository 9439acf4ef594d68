"""Issue 9's targets, checked on one run's result: every comparison is with a baseline measured in the same run
(raw jupyter_client, jupyter-kernel-gateway), except the few limits the issue sets in absolute terms. A figure
the run did not measure (jupyter-kernel-gateway skipped) checks as ``pass: null``."""

from __future__ import annotations

from typing import Any

from .config import Json

KEEP_HOLDING = [
    "resume after kill -9: 1 MB <= 150 ms, 100 MB <= 0.6 s (skg-bench-state)",
    "a checkpoint beside an unchanged 100 MB DataFrame: <= 2 ms p50 and < 64 KB written (skg-bench-state)",
]
KERNEL_HOW = "CPU of the session's kernel / executes - the same for a raw jupyter_client kernel (IPC)"


def _get(tree: Any, *path: str) -> float | None:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return None if tree is None else float(tree)


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)


def _over(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


def check(value: float | None, limit: float, unit: str, how: str, at_most: bool = True) -> Json:
    passed = None if value is None else (value <= limit if at_most else value >= limit)
    return {"measured": value, "limit": ("<= " if at_most else ">= ") + f"{limit:g}", "unit": unit, "pass": passed,
            "how": how}  # fmt: skip


def targets(result: Json) -> Json:
    cpu = result.get("cpu_ms_per_execute", {})
    latency = result.get("latency_ms", {})
    throughput = result.get("throughput", {})
    memory = result.get("memory", {})
    sessions = result.get("config", {}).get("sessions", 8)
    top = str(max((int(k) for k in throughput.get("raw_jupyter_client", {})), default=sessions))

    raw_kernel_cpu = _get(cpu, "raw_jupyter_client_ipc", "session_kernel")
    raw_p50 = _get(latency, "raw_jupyter_client_ipc", "p50")

    def eps(key: str) -> float | None:
        return _get(throughput, key, top, "executes_per_second")

    raw_eps, jkg_eps = eps("raw_jupyter_client"), eps("jkg_websocket")
    checks = {
        "service_cpu_ms_per_execute_websocket": check(
            _get(cpu, "websocket_execute", "service"), 1.0, "ms", "gateway process CPU / executes, one session"
        ),
        "service_cpu_ms_per_execute_rest": check(
            _get(cpu, "rest_execute", "service"), 1.5, "ms", "gateway process CPU / executes, one session"
        ),
        "kernel_cpu_ms_per_execute_websocket_minus_raw": check(
            _minus(_get(cpu, "websocket_execute", "session_kernel"), raw_kernel_cpu), 0.3, "ms", KERNEL_HOW
        ),
        "kernel_cpu_ms_per_execute_rest_minus_raw": check(
            _minus(_get(cpu, "rest_execute", "session_kernel"), raw_kernel_cpu), 0.3, "ms", KERNEL_HOW
        ),
        "rest_p50_minus_raw_p50_ms": check(
            _minus(_get(latency, "rest_execute", "p50"), raw_p50), 1.5, "ms", "warm p50 - raw jupyter_client IPC p50"
        ),
        "websocket_p50_minus_raw_p50_ms": check(
            _minus(_get(latency, "websocket_execute", "p50"), raw_p50), 1.0, "ms", "warm p50 - raw IPC p50"
        ),
        "websocket_throughput_over_jkg": check(
            _over(eps("ours_websocket"), jkg_eps), 1.5, "x", f"executes/s at {top} sessions", at_most=False
        ),
        "rest_throughput_over_jkg": check(
            _over(eps("ours_rest"), jkg_eps), 1.5, "x", f"executes/s at {top} sessions", at_most=False
        ),
        "websocket_throughput_over_raw": check(
            _over(eps("ours_websocket"), raw_eps), 0.75, "x", f"executes/s at {top} sessions", at_most=False
        ),
        "rest_throughput_over_raw": check(
            _over(eps("ours_rest"), raw_eps), 0.75, "x", f"executes/s at {top} sessions", at_most=False
        ),
        "idle_session_pss_minus_jkg_kernel_pss_mib": check(
            _minus(
                _get(memory, "serverless_kernel_gateway", "added_pss_mib_per_session"),
                _get(memory, "jupyter_kernel_gateway", "added_pss_mib_per_session"),
            ),
            0.0,
            "MiB",
            "PSS a live idle session adds - PSS a jupyter-kernel-gateway kernel adds",
        ),
        "evicted_sessions_added_pss_mib": check(
            _get(memory, "evicted", "added_pss_mib_in_all"),
            10.0,
            "MiB",
            f"tree PSS with {memory.get('evicted', {}).get('sessions')} evicted sessions - before them",
        ),
        "new_session_first_result_p50_ms_pool_warm": check(
            _get(result, "new_session", "pool_warm_ms", "p50"), 25.0, "ms", "POST /execute without a session"
        ),
        "new_session_first_result_p50_ms_pool_empty": check(
            _get(result, "new_session", "pool_empty", "beyond_pool_ms", "p50"),
            150.0,
            "ms",
            "requests of a burst beyond the pool's size",
        ),
        "replica_cold_start_p50_ms": check(
            _get(result, "replica_cold_start", "exec_to_first_result_ms", "p50"),
            1000.0,
            "ms",
            "exec of a fresh replica -> first result of a session restored from Redis",
        ),
    }
    verdicts = [c["pass"] for c in checks.values()]
    return {
        **checks,
        # Not a target: the service's CPU per cell over a raw kernel's in the same run. On a shared machine the
        # absolute figures move with its speed (a raw cell took 3.1 to 4.5 ms here within an hour); this does less.
        "service_cpu_over_raw_kernel_cpu": {
            "websocket": _over(_get(cpu, "websocket_execute", "service"), raw_kernel_cpu),
            "rest": _over(_get(cpu, "rest_execute", "service"), raw_kernel_cpu),
            "raw_kernel_cpu_ms_per_execute": raw_kernel_cpu,
        },
        "measured_elsewhere": KEEP_HOLDING,
        "raw_baseline": "raw_jupyter_client_ipc: the transport the service itself uses to reach its kernels",
        "passed": sum(v is True for v in verdicts),
        "failed": sum(v is False for v in verdicts),
        "not_measured": sum(v is None for v in verdicts),
        "all_pass": None if None in verdicts else all(verdicts),
    }
