"""One model through every phase: cold and warm starts, the locust timeline, idle memory, REST and SSE."""

from __future__ import annotations

import asyncio
import csv
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

from loadtests.common import BenchError, log
from loadtests.compare import metrics
from loadtests.compare.gateway import GatewayModel
from loadtests.compare.locust_run import run_locust
from loadtests.compare.model import Model
from loadtests.compare.plan import Plan
from loadtests.compare.probe import hold_state, resume, run_cell, warm_start
from loadtests.compare.sampler import Sample, Sampler, steady
from loadtests.users import cells
from loadtests.users.arrivals import make_steady

Json = dict[str, Any]


def progress(model: Model, message: str) -> None:
    log("compare", f"{model.key}: {message}")


def memory_now(sampler: Sampler, reads: int = 3, settle: float = 0.0, limit: int = 20) -> Json:
    """The mean of the first ``reads`` consecutive readings (1 s apart) that agree, after ``settle`` seconds
    (the model's own idle policy, e.g. the gateway's eviction): no longer than the memory takes to settle."""
    time.sleep(settle)
    window: list[Sample] = []
    for i in range(max(limit, reads)):
        if i:
            time.sleep(1.0)
        window = [*window, sampler.read()][-reads:]
        if len(window) == reads and steady(window):
            break
    return {
        "pss_mb": round(sum(s.pss_mb for s in window) / len(window), 1),
        "servers": window[-1].servers,
        "processes": window[-1].processes,
        "readings": i + 1,
    }


def measure_starts(model: Model, plan: Plan) -> Json:
    """Warm start (a new kernel on running processes) and cold start (from no process: every server culled or
    scaled to zero) to the first result, with whether the user's variables came back."""
    out: Json = {}
    model.set_idle_actions(False)
    paths = list(model.probe_apis().items())
    for label, user in paths if plan.notebook_path else paths[:1]:
        progress(model, f"starts via {label or 'the user server'}")
        api = model.user_api(user)
        model.ensure_running(user)
        warm = [asyncio.run(warm_start(api)) * 1000 for _ in range(plan.warm_reps)]
        marker = f"probe-{uuid.uuid4().hex[:8]}"
        kernel = asyncio.run(hold_state(api, marker))
        cold, kept = [], []
        for _ in range(plan.cold_reps):
            model.idle_action_now()
            if model.servers():
                raise BenchError(f"{model.key}: servers still up after the idle action")
            began = time.perf_counter()
            api = model.user_api(user)  # the hub spawns here; an activator starts its server on the request
            back = asyncio.run(resume(api, kernel, marker))
            cold.append(time.perf_counter() - began)
            kept.append(back.state_back)
            kernel = back.kernel_id
            if not back.state_back:
                asyncio.run(run_cell(api, kernel, cells.make_state_cell(marker)))
        out[label or "user server"] = {
            "warm_start_ms": metrics.spread(warm),
            "cold_start_s": metrics.spread(cold, 2),
            "state_back": sum(kept),
            "cold_starts": len(kept),
        }
    return out


def measure_idle(model: Model, plan: Plan, sampler: Sampler) -> Json:
    """Memory with 1, 10, 50 idle users (each holding a kernel with state), before and after the idle action."""
    model.set_idle_actions(False)
    out: Json = {"levels": {}}
    if plan.idle_baseline:
        model.idle_action_now()
        out["no_users"] = memory_now(sampler, plan.memory_reads, model.settle_s)
    held: list[tuple[str, str, str]] = []

    retried: list[str] = []

    def add(index: int) -> tuple[str, str, str]:
        name = f"idle{index}"
        marker = f"{name}-{uuid.uuid4().hex[:8]}"
        try:
            return name, asyncio.run(hold_state(model.user_api(name), marker)), marker
        except Exception as exc:  # (once, and counted: the report says how often and why)
            retried.append(f"{name}: {type(exc).__name__}: {exc}"[:300])
            return name, asyncio.run(hold_state(model.user_api(name), marker)), marker

    with ThreadPoolExecutor(plan.spawn_concurrency) as pool:
        for level in plan.idle_levels:
            began = time.monotonic()
            held += list(pool.map(add, range(len(held), level)))
            progress(model, f"{level} idle users (started in {time.monotonic() - began:.0f} s)")
            out["levels"][str(level)] = memory_now(sampler, plan.memory_reads, model.settle_s)
    progress(model, "idle action (cull / scale to zero)")
    model.set_idle_actions(True)
    began = time.monotonic()
    # Stopping takes a few seconds a server (more on a busy machine); the culler stops ten at a time.
    limit = plan.idle_after * 4 + 60 + 4 * model.servers()
    if not model.wait_servers(0, limit):
        raise BenchError(f"{model.key}: {model.servers()} servers still up {limit:g} s after going idle")
    out["idle_action_s"] = round(time.monotonic() - began, 1)
    out["after_idle_action"] = memory_now(sampler, plan.memory_reads)
    model.set_idle_actions(False)

    def check(user: tuple[str, str, str]) -> bool:
        name, kernel, marker = user
        return asyncio.run(resume(model.user_api(name), kernel, marker)).state_back

    checked = held[: plan.state_checks]
    with ThreadPoolExecutor(max(1, len(checked))) as pool:  # users come back independently of each other
        kept = sum(pool.map(check, checked))
    out["state_checked"], out["state_back"] = len(checked), kept
    out["idle_users_retried"] = retried
    return out


def write_resources(path: Path, sampler: Sampler) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t", "pss_mb", "cpu_s", "processes", "servers"])
        for s in sampler.samples:
            w.writerow([f"{s.t:.3f}", f"{s.pss_mb:.1f}", f"{s.cpu_s:.2f}", s.processes, s.servers])


def run_model(model: Model, plan: Plan, out: Path, seed: int) -> Json:
    began_wall, began_cpu = time.monotonic(), time.process_time()
    progress(model, "starting")
    model.idle_after = plan.idle_after
    sampler = Sampler(model.roots, model.servers, 1.0)
    result: Json = {"key": model.key, "title": model.title}
    errors: dict[str, str] = {}

    def phase(name: str, run: Callable[[], None]) -> None:
        """A phase that fails is reported, and the model's other phases still run."""
        try:
            run()
        except Exception as exc:
            progress(model, f"{name} failed: {type(exc).__name__}: {exc}")
            errors[name] = f"{type(exc).__name__}: {exc}"[-1500:]

    try:
        model.start()
        sampler.start()
        stages = plan.timeline()

        def starts() -> None:
            result["starts"] = measure_starts(model, plan)

        def load() -> None:
            progress(model, f"locust timeline ({stages[-1].end:.0f} s: ramp, steady, burst, saturation, daily trace)")
            model.set_idle_actions(True)
            try:
                run = run_locust(model.locust(), stages, out / f"locust_{model.key}", plan, seed)
            finally:
                model.set_idle_actions(False)
            result["load"] = metrics.run_figures(run.rows, run.started, stages, sampler.samples)
            result["load"]["locust_cpu_s"] = round(run.cpu_s, 1)
            result["load"]["started"] = run.started

        def idle() -> None:
            result["idle"] = measure_idle(model, plan, sampler)

        def rest_sse() -> None:
            progress(model, "REST and SSE users")
            assert isinstance(model, GatewayModel)
            rest = run_locust(
                model.rest_locust(), make_steady(3, plan.rest_seconds), out / "locust_gateway_rest", plan, seed
            )
            t0, t1 = rest.started + 2.0, rest.started + plan.rest_seconds
            result["rest_sse"] = {
                name: metrics.latency(rest.rows, t0, t1, name)
                for name in ("warm execute", "first output", "stream reply")
            }

        phase("starts", starts)
        phase("load", load)
        phase("idle", idle)
        if isinstance(model, GatewayModel) and plan.rest_seconds:
            phase("rest_sse", rest_sse)
    except BenchError as exc:
        errors["start"] = str(exc)[-1500:]
    finally:
        sampler.stop()
        write_resources(out / f"resources_{model.key}.csv", sampler)
        model.close()
    result.update(notes=model.notes, components=model.components, versions=model.versions)
    if errors:
        result["errors"] = errors
    result["run"] = {
        "wall_s": round(time.monotonic() - began_wall, 1),
        "driver_cpu_s": round(time.process_time() - began_cpu, 1),
    }
    if sampler.samples:
        result["run"]["model_cpu_s"] = round(sampler.samples[-1].cpu_s, 1)
    result["plan"] = asdict(plan)
    return result
