"""Where the time goes (``--profile``): py-spy samples the gateway process and the session's kernel while a
block of warm executes runs on one face, and the run reports the functions the samples land in: innermost
frames, and this project's own functions with everything they call.

py-spy reads each process from outside (``--nonblocking``: it never pauses it) and, with ``--gil``, takes only
samples of the thread that holds the GIL: Python at work, not threads waiting in select (a kernel in a sandbox's
pid namespace shows py-spy thread ids it cannot check for idleness otherwise). A function's share of the samples
times the CPU per execute that /proc shows for the same block estimates its milliseconds per execute. These
blocks are not the timed ones: the sampler's own CPU competes with them. The raw stacks (flamegraph.pl or
speedscope input) are kept beside the JSON result."""

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
from .sampling import CpuTally, children_cpu_by_pid, own_cpu

RATE = 1000  # samples per second
TOP = 20
OURS = ("(kernel_gateway/", "(notebook_state/")  # frames of this project's code
ENTRY = (
    "(kernel_gateway/__main__.py)",
    "(kernel_gateway/cli.py)",
    "(kernel_gateway/server.py)",
    "(kernel_gateway/replica.py)",
)
_LINE = re.compile(r":\d+\)$")

Block = Callable[[int], int]
"""Runs n warm executes on one face; returns how many it ran."""


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise BenchError("--profile needs py-spy (the test extra installs it)")
    return found


def busiest_child(target: Target, block: Block) -> int:
    """The descendant that spends the most CPU while ``block`` runs: the kernel of the face's session."""
    read = children_cpu_by_pid(target.process.pid)
    before = read()
    block(20)
    after = read()
    return max(after, key=lambda pid: after[pid] - before.get(pid, after[pid]))


def record(run: Run, target: Target, label: str, block: Block) -> Json:
    kernel = busiest_child(target, block)
    pids = {"service": target.process.pid, "session_kernel": kernel}
    files = {name: run.config.output.with_name(f"{run.config.output.stem}-profile-{label}-{name}.txt") for name in pids}
    samplers = {}
    for name, pid in pids.items():
        files[name].parent.mkdir(parents=True, exist_ok=True)
        cmd = [py_spy(), "record", "--pid", str(pid), "--gil", "--nonblocking", "--rate", str(RATE),
               "--format", "raw", "--output", str(files[name]), "--duration", "3600"]  # fmt: skip
        samplers[name] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tally = CpuTally({"service": own_cpu(target.process.pid), "session_kernel": own_cpu(kernel)})
    try:
        time.sleep(1.0)  # py-spy attaches before it samples
        for name, sampler in samplers.items():
            if sampler.poll() is not None:
                raise BenchError(f"py-spy ({name}) exited: {sampler.stdout.read() if sampler.stdout else ''}")
        tally.start()
        executes = block(run.config.runs)
        tally.stop(executes)
        for sampler in samplers.values():
            sampler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        for sampler in samplers.values():
            sampler.wait(120)
    finally:
        for sampler in samplers.values():
            if sampler.poll() is None:
                sampler.kill()
                sampler.wait(10)
    cpu = tally.per_execute_ms()
    out: Json = {"executes": executes, "rate_hz": RATE, "cpu_ms_per_execute_while_sampled": cpu}
    for name, path in files.items():
        if not path.exists():
            raise BenchError(f"py-spy wrote no profile of {name} for {label}")
        out[name] = {**summarize(path.read_text(), cpu.get(name) or 0.0), "stacks_file": str(path)}
    progress(f"    profile {label}: CPU ms per execute {cpu}; stacks in {files['service'].parent}")
    return out


def summarize(raw: str, cpu_ms_per_execute: float) -> Json:
    """From py-spy's raw output (``frame;frame;... count`` per line): the top functions by self samples (the
    innermost frame), and this project's functions by inclusive samples (anywhere on the stack; the entry
    point left out), as shares and estimated ms/execute."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        # Functions, not lines: "send (zmq/sugar/socket.py:701)" -> "send (zmq/sugar/socket.py)"
        code = [_LINE.sub(")", f) for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not code:
            continue
        total += count
        own[code[-1]] += count
        for frame in set(code):
            if any(mark in frame for mark in OURS) and not frame.endswith(ENTRY):
                inclusive[frame] += count

    def top(counter: Counter[str]) -> list[Json]:
        return [
            {
                "function": f,
                "share": round(n / total, 3),
                "ms_per_execute_est": round(cpu_ms_per_execute * n / total, 3),
            }
            for f, n in counter.most_common(TOP)
        ]

    return {"samples": total, "self": top(own), "inclusive_ours": top(inclusive)}


def faces(run: Run, ours: Target, rest: Block, ws: Block) -> Json:
    progress(f"profile (py-spy --gil at {RATE} Hz): {run.config.runs} REST and WebSocket executes each")
    return {"rest": record(run, ours, "rest", rest), "websocket": record(run, ours, "websocket", ws)}
