"""Where the time goes (``--profile``): py-spy samples the gateway process and its kernels while a block of
warm executes runs on one face, and the run reports the functions that the samples land in, per execute.

py-spy reads the processes' memory from outside (``--nonblocking``: it never pauses them) and counts only
threads that are on a CPU, so samples / rate / executes estimates CPU milliseconds per execute in a function.
These blocks are not the timed ones: the sampler's own CPU competes with them. The raw stacks (flamegraph.pl
or speedscope input) are kept beside the JSON result."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from loadtests.common import BenchError

from .config import Json
from .context import Run, progress
from .processes import Target

RATE = 500  # samples per second
TOP = 15
_LINE = re.compile(r":\d+\)$")


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise BenchError("--profile needs py-spy (the test extra installs it)")
    return found


def record(run: Run, target: Target, label: str, block: Callable[[], int]) -> Json:
    """Profile ``block`` (which returns how many executes it ran) on ``target`` and its kernels."""
    out = run.config.output.with_name(f"{run.config.output.stem}-profile-{label}.txt")
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [py_spy(), "record", "--pid", str(target.process.pid), "--subprocesses", "--nonblocking",
           "--rate", str(RATE), "--format", "raw", "--output", str(out), "--duration", "3600"]  # fmt: skip
    sampler = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(1.0)  # py-spy attaches to every process of the tree before it samples
        if sampler.poll() is not None:
            raise BenchError(f"py-spy exited: {sampler.stdout.read() if sampler.stdout else ''}")
        executes = block()
        sampler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        sampler.wait(120)
    finally:
        if sampler.poll() is None:
            sampler.kill()
            sampler.wait(10)
    if not out.exists():
        raise BenchError(f"py-spy wrote no profile for {label}")
    summary = summarize(out.read_text(), target.process.pid, executes)
    summary["stacks_file"] = str(out)
    progress(f"    profile {label}: {summary['ms_per_execute']} ms per execute sampled; stacks in {out}")
    return summary


def summarize(raw: str, service_pid: int, executes: int) -> Json:
    """From py-spy's raw output (``frame;frame;... count`` per line, processes as ``process N:...`` frames):
    per group (the gateway process, its kernels), milliseconds per execute in all, and the top functions by
    self samples (the innermost frame) and by inclusive samples (anywhere on the stack)."""
    groups: dict[str, tuple[Counter[str], Counter[str]]] = {"service": (Counter(), Counter()),
                                                            "kernels": (Counter(), Counter())}  # fmt: skip
    totals: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        processes = [f for f in frames if f.startswith("process ")]
        group = "service" if processes and processes[-1].startswith(f"process {service_pid}:") else "kernels"
        # Functions, not lines: "send (zmq/sugar/socket.py:701)" -> "send (zmq/sugar/socket.py)"
        code = [_LINE.sub(")", f) for f in frames if not f.startswith(("process ", "thread "))]
        if not code:
            continue
        own, inclusive = groups[group]
        totals[group] += count
        own[code[-1]] += count
        for frame in set(code):
            inclusive[frame] += count

    def per_execute(samples: int) -> float:
        return round(1000.0 * samples / RATE / executes, 3) if executes else 0.0

    def top(counter: Counter[str]) -> list[Json]:
        return [{"function": f, "ms_per_execute": per_execute(n)} for f, n in counter.most_common(TOP)]

    return {
        "executes": executes,
        "rate_hz": RATE,
        "ms_per_execute": {group: per_execute(totals[group]) for group in groups},
        "self": {group: top(own) for group, (own, _) in groups.items()},
        "inclusive": {group: top(inclusive) for group, (_, inclusive) in groups.items()},
    }


def faces(run: Run, ours: Target, rest: Callable[[int], int], ws: Callable[[int], int]) -> Json:
    n = run.config.runs
    progress(f"profile (py-spy at {RATE} Hz): {n} REST and {n} WebSocket executes")
    return {
        "rest": record(run, ours, "rest", lambda: rest(n)),
        "websocket": record(run, ours, "websocket", lambda: ws(n)),
    }
