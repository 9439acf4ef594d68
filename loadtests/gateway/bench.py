"""One run, in the order that keeps measures apart: services up; memory of live idle sessions (before load);
latency and CPU per execute; throughput; new sessions on a warm and on an empty pool; then, with the main
services stopped, memory of evicted sessions and the replica cold start."""

from __future__ import annotations

import os

from . import coldstart, jkg, latency, memory, profile, throughput
from .clients import create_session, delete_session, rest_execute, timed_block
from .config import Config, Json
from .context import Run, progress
from .processes import Target, describe, kernelspec_argv, wait_pool_full
from .report import notes, skeleton
from .targets import targets


def run_bench(config: Config) -> Json:
    run = Run(config, skeleton(config))
    try:
        return _measure(run)
    finally:
        run.close()


def _start_jkg(run: Run) -> tuple[Target, Json] | None:
    cfg = run.config
    if cfg.skip_jkg:
        return None
    # Before anything is timed: a first run installs it, which takes a while.
    info = jkg.ensure_venv(cfg.jkg_venv, run.workdir)
    run.result["environment"]["jupyter_kernel_gateway"] = info["versions"][jkg.NAME]
    home = run.workdir / "jkg-home"  # its cwd: nothing of this project in it
    home.mkdir()
    progress(f"starting {jkg.NAME}")
    target = jkg.start(cfg.jkg_venv, home, run.token, run.ipython_dir)
    run.stack.callback(target.process.stop)
    return target, info


def _measure(run: Run) -> Json:
    cfg, result = run.config, run.result
    if cfg.coldstart_only:
        result["replica_cold_start"] = coldstart.replica_cold_start(run)
        return _finish(result)
    peer = _start_jkg(run)
    ours, client = run.start_ours("skg")
    result["services"]["serverless_kernel_gateway"] = describe(ours, client, run.spec())

    ws_kernels, result["memory"]["serverless_kernel_gateway"] = memory.live_sessions(run, ours, client, pooled=True)
    jkg_target: Target | None = None
    jkg_kernels: list[str] = []
    if peer is not None:
        jkg_target, info = peer
        jkg_client = run.stack.enter_context(jkg_target.client())
        result["services"]["jupyter_kernel_gateway"] = {
            "url": jkg_target.url,
            "pid": jkg_target.process.pid,
            "venv": str(cfg.jkg_venv),
            "module": info["module"],
            "python": info["python"],
            "versions": info["versions"],
            "kernelspec_argv": kernelspec_argv(jkg_client),
        }
        jkg_kernels, result["memory"]["jupyter_kernel_gateway"] = memory.live_sessions(
            run, jkg_target, jkg_client, pooled=False
        )

    rest_sessions = [create_session(client) for _ in range(cfg.sessions)]
    wait_pool_full(ours, client)
    jkg_kernel = jkg_kernels[0] if jkg_kernels else None
    latency.measure(run, ours, client, rest_sessions[0], ws_kernels[0], jkg_target, jkg_kernel)
    if cfg.profile:
        [ws] = run.channels(ours, ws_kernels[:1])
        result["profile"] = profile.faces(
            run,
            ours,
            rest=lambda n: len([rest_execute(client, rest_sessions[0]) for _ in range(n)]),
            ws=lambda n: len(run.loop.run(timed_block(ws.execute, n))),
        )
        run.loop.run(ws.close(), timeout=30)
    services = [("ours", ours, ws_kernels, rest_sessions)]
    if jkg_target is not None:
        services.append(("jkg", jkg_target, jkg_kernels, []))
    throughput.measure(run, services)
    if jkg_target is not None:
        jkg_target.process.stop()
    for session_id in ws_kernels + rest_sessions:
        delete_session(client, session_id)

    new_session = result["new_session"]
    new_session["pool_warm_ms"] = coldstart.new_session_pool_warm(run, ours, client)
    new_session["raw_first_execute_on_fresh_kernel_ms"] = coldstart.raw_first_execute(run)
    new_session["pool_empty"] = coldstart.new_session_pool_empty(run, ours, client)
    ours.process.stop()

    result["memory"]["evicted"] = memory.evicted_sessions(run)
    result["replica_cold_start"] = coldstart.replica_cold_start(run)
    return _finish(result)


def _finish(result: Json) -> Json:
    result["environment"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["targets"] = targets(result)
    result["notes"] = notes(result)
    return result
