"""What the in-kernel capture hook costs per cell, and how much of it is process state (random generators,
sys.path, matplotlib, IPython state, ...: ``notebook_state.capture.process_state``).

Starts real ipykernel processes (jupyter_client, no service, no store) side by side:

- ``raw``: a plain ipykernel;
- ``variables``: the capture hook installed with process-state capture off (``install(process=False)``; absent
  before process state existed, then this variant is skipped);
- ``capture``: the capture hook as the service installs it (variables and process state).

Every kernel first runs the same setup (numpy and pandas imported, as the service preloads them; the
``libraries`` scenario adds matplotlib inline with a figure, changed rcParams and pandas/numpy options, seeded
``random`` and numpy generators, a sys.path entry and a warnings filter). Then the trivial cell ``x = x + 1`` is
run in blocks, kernels in rotating order so background load hits all alike. Per cell we report the kernel
process's CPU time (user + system, from /proc through psutil; summed over all blocks so the clock-tick resolution
does not matter), and, inside the ``capture`` kernel, the process-state hook's own time (wall: perf_counter;
CPU: thread_time, which a busy machine inflates far less).

Prints one JSON document (progress to stderr) and writes ``loadtests/results/bench_process_state.json``.
Run as ``python -m loadtests.bench_process_state [--blocks N] [--cells N] [--quick]``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

from loadtests.common import BenchError, cpu_model, git_commit, log, package_version, percentile, sigterm_as_exit

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_OUTPUT = HERE / "results" / "bench_process_state.json"
CELL = "x = x + 1"
REPLY_TIMEOUT = 60.0
WARMUP = 50

SETUP = {
    "plain": "import numpy, pandas\nx = 0",
    "libraries": """
import numpy as np, pandas as pd, random, sys, warnings
%matplotlib inline
import matplotlib.pyplot as plt
random.seed(1); np.random.seed(2)
sys.path.append('/tmp/bench-process-state-path')
warnings.filterwarnings('ignore', message='bench')
pd.set_option('display.max_rows', 7); np.set_printoptions(precision=3)
plt.rcParams['lines.linewidth'] = 3
fig, ax = plt.subplots(); ax.plot([1, 2, 3]); plt.close(fig)
x = 0
""",
}

INSTALL = "__import__('notebook_state.capture').capture.install(auto_dir={auto!r}{extra})"
# Times the process-state capture inside the kernel: the tracker's ProcessState.capture wrapped on the instance.
INSTRUMENT = """
import time as _b_time
_b_ps = get_ipython()._notebook_state_tracker.process
_b_t = []
_b_orig = _b_ps.capture
def _b_capture(*a, **k):
    _b_s, _b_c = _b_time.perf_counter(), _b_time.thread_time()
    try:
        return _b_orig(*a, **k)
    finally:
        _b_t.append((_b_time.perf_counter() - _b_s, _b_time.thread_time() - _b_c))
_b_ps.capture = _b_capture
"""
INSTRUMENT_READ = "[[round(w * 1e6, 2), round(c * 1e6, 2)] for w, c in _b_t]"


@dataclass
class Variant:
    name: str
    install: str | None
    km: KernelManager
    client: BlockingKernelClient
    auto: Path
    cpu_seconds: float = 0.0
    cells: int = 0
    block_us: list[float] = field(default_factory=list)

    @property
    def pid(self) -> int:
        provisioner = self.km.provisioner
        pid = getattr(provisioner, "pid", None) or getattr(getattr(provisioner, "process", None), "pid", None)
        if not isinstance(pid, int):
            raise BenchError(f"{self.name}: no kernel pid")
        return pid


def execute(client: BlockingKernelClient, code: str, silent: bool = False) -> dict[str, Any]:
    msg_id = client.execute(code, silent=silent, store_history=not silent)
    reply: dict[str, Any] = client.get_shell_msg(timeout=REPLY_TIMEOUT)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = client.get_shell_msg(timeout=REPLY_TIMEOUT)
    if reply["content"]["status"] != "ok":
        raise BenchError(f"{code[:60]!r}: {reply['content'].get('ename')}: {reply['content'].get('evalue')}")
    return reply


def evaluate(client: BlockingKernelClient, expression: str) -> Any:
    reply = client.execute_interactive(
        "", silent=True, user_expressions={"v": expression}, timeout=REPLY_TIMEOUT, output_hook=lambda m: None
    )
    value = reply["content"]["user_expressions"]["v"]
    if value.get("status") != "ok":
        raise BenchError(f"{expression!r}: {value}")
    return eval(value["data"]["text/plain"])  # a repr of lists/dicts of numbers, from our own kernel


def drain(client: BlockingKernelClient) -> None:
    with contextlib.suppress(Exception):
        while client.iopub_channel.msg_ready():
            client.get_iopub_msg(timeout=0)


def clear(auto: Path) -> None:
    for entry in os.scandir(auto):
        shutil.rmtree(entry.path, ignore_errors=True)


@contextlib.contextmanager
def kernels(workdir: Path, scenario: str, variants: Sequence[tuple[str, str | None]]) -> Iterator[list[Variant]]:
    started: list[Variant] = []
    try:
        for name, extra in variants:
            km = KernelManager(kernel_name="python3")
            km.start_kernel(cwd=str(workdir), env={**os.environ, "PYTHONUNBUFFERED": "1"})
            client = km.blocking_client()
            client.start_channels()
            client.wait_for_ready(timeout=60)
            auto = workdir / f"auto-{scenario}-{name}"
            variant = Variant(name, extra, km, client, auto)
            started.append(variant)
            if extra is not None:
                execute(client, INSTALL.format(auto=str(auto), extra=extra), silent=True)
            execute(client, SETUP[scenario])
            drain(client)
        yield started
    finally:
        for v in started:
            with contextlib.suppress(Exception):
                v.client.stop_channels()
            with contextlib.suppress(Exception):
                v.km.shutdown_kernel(now=True)


def supports_process_flag() -> bool:
    import inspect

    from notebook_state import capture

    return "process" in inspect.signature(capture.install).parameters


def run_scenario(workdir: Path, scenario: str, blocks: int, cells: int) -> dict[str, Any]:
    variants: list[tuple[str, str | None]] = [("raw", None)]
    if supports_process_flag():
        variants.append(("variables", ", process=False"))
    variants.append(("capture", ""))
    with kernels(workdir, scenario, variants) as ks:
        for v in ks:
            for _ in range(WARMUP):
                execute(v.client, CELL)
            drain(v.client)
            if v.install is not None:
                clear(v.auto)
        for block in range(blocks):
            order = ks[block % len(ks) :] + ks[: block % len(ks)]
            for v in order:
                proc = psutil.Process(v.pid)
                before = proc.cpu_times()
                for _ in range(cells):
                    execute(v.client, CELL)
                after = proc.cpu_times()
                spent = (after.user - before.user) + (after.system - before.system)
                v.cpu_seconds += spent
                v.cells += cells
                v.block_us.append(spent / cells * 1e6)
                drain(v.client)
                if v.install is not None:
                    clear(v.auto)
            log("bench_process_state", f"{scenario}: block {block + 1}/{blocks}")
        result: dict[str, Any] = {}
        raw = next(v for v in ks if v.name == "raw")
        for v in ks:
            expected = WARMUP + blocks * cells
            if evaluate(v.client, "x") != expected:
                raise BenchError(f"{v.name}: x is not {expected}")
            blocks_sorted = sorted(v.block_us)
            result[v.name] = {
                "kernel_cpu_us_per_cell": round(v.cpu_seconds / v.cells * 1e6, 1),
                "block_median_us": round(percentile(blocks_sorted, 0.5), 1),
                "over_raw_us": round((v.cpu_seconds - raw.cpu_seconds) / v.cells * 1e6, 1),
            }
        capture = next(v for v in ks if v.name == "capture")
        with contextlib.suppress(BenchError):
            # Only once process state exists: the hook's own time, inside the kernel.
            execute(capture.client, INSTRUMENT, silent=True)
            for _ in range(cells):
                execute(capture.client, CELL)
            timings = evaluate(capture.client, INSTRUMENT_READ)
            for i, label in enumerate(("process_state_hook_wall_us", "process_state_hook_cpu_us")):
                values = sorted(t[i] for t in timings)
                if values:
                    result[label] = {
                        "n": len(values),
                        "p50": round(percentile(values, 0.5), 2),
                        "p90": round(percentile(values, 0.9), 2),
                        "mean": round(sum(values) / len(values), 2),
                    }
        return result


def environment() -> dict[str, Any]:
    return {
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(REPO),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        **{p: package_version(p) for p in ("ipykernel", "ipython", "numpy", "pandas", "matplotlib")},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_process_state", description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, default=10, help="blocks of cells per kernel (default 10)")
    parser.add_argument("--cells", type=int, default=200, help="cells per block (default 200)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 blocks of 50 cells")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    blocks, cells = (2, 50) if args.quick else (args.blocks, args.cells)
    result: dict[str, Any] = {
        "benchmark": "bench_process_state",
        "method": __doc__.split("\n\n")[1].strip() if __doc__ else "",
        "config": {"cell": CELL, "blocks": blocks, "cells_per_block": cells, "warmup": WARMUP},
        "environment": environment(),
        "scenarios": {},
    }
    workdir = Path(
        tempfile.mkdtemp(prefix="bench-process-state-", dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
    )
    started = time.monotonic()
    try:
        with sigterm_as_exit():
            for scenario in SETUP:
                log("bench_process_state", f"scenario {scenario}")
                result["scenarios"][scenario] = run_scenario(workdir, scenario, blocks, cells)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result["duration_s"] = round(time.monotonic() - started, 1)
    result["environment"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(result, indent=2)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
