"""What a run reads off its clock and its processes: wall-time statistics, CPU seconds by group of processes,
and memory as PSS (proportional set size: a page shared by n processes counts 1/n in each)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence

import psutil

from loadtests.common import percentile

from .config import Json

MIB = 1024.0 * 1024.0

CpuReader = Callable[[], float]
"""CPU seconds (user + system) so far of some group of processes."""


def latency_stats(seconds: Sequence[float]) -> Json:
    """Milliseconds: count, mean, min, p50, p90, p99, max."""
    ms = sorted(s * 1000.0 for s in seconds)
    if not ms:
        return {"n": 0}
    return {
        "n": len(ms),
        "mean": round(sum(ms) / len(ms), 3),
        "min": round(ms[0], 3),
        "p50": round(percentile(ms, 0.50), 3),
        "p90": round(percentile(ms, 0.90), 3),
        "p99": round(percentile(ms, 0.99), 3),
        "max": round(ms[-1], 3),
    }


def _cpu(proc: psutil.Process) -> float:
    with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
        times = proc.cpu_times()
        return float(times.user + times.system)
    return 0.0


def own_cpu(pid: int) -> CpuReader:
    """The process alone (all its threads)."""
    proc = psutil.Process(pid)
    return lambda: _cpu(proc)


def children_cpu(pid: int) -> CpuReader:
    """Its live descendants together: a gateway's kernels (and their sandbox wrappers, and its warm pool)."""
    root = psutil.Process(pid)

    def read() -> float:
        with contextlib.suppress(psutil.NoSuchProcess):
            return sum(_cpu(child) for child in root.children(recursive=True))
        return 0.0

    return read


def children_cpu_by_pid(pid: int) -> Callable[[], dict[int, float]]:
    """Each live descendant's CPU seconds, by pid: tells the session's kernel from idle ones."""
    root = psutil.Process(pid)

    def read() -> dict[int, float]:
        with contextlib.suppress(psutil.NoSuchProcess):
            return {child.pid: _cpu(child) for child in root.children(recursive=True)}
        return {}

    return read


def pids_cpu(pids: Iterable[int]) -> CpuReader:
    procs = [psutil.Process(pid) for pid in pids]
    return lambda: sum(_cpu(proc) for proc in procs)


class CpuTally:
    """CPU seconds spent by named groups of processes over measured blocks, and the executes they served.

    With ``by_pid`` (a gateway's descendants, by pid), ``session_kernel`` is the one descendant that spent the
    most: the kernel that ran the cells, without the idle kernels beside it.

    /proc counts CPU in clock ticks (10 ms): a block should last well over that, and figures per execute come
    from the sum over all blocks."""

    def __init__(self, groups: Mapping[str, CpuReader], by_pid: Callable[[], dict[int, float]] | None = None) -> None:
        self.groups = dict(groups)
        self.by_pid = by_pid
        self.seconds = dict.fromkeys(self.groups, 0.0)
        self.pid_seconds: dict[int, float] = {}
        self.executes = 0
        self._before: dict[str, float] | None = None
        self._pids_before: dict[int, float] = {}

    def start(self) -> None:
        self._before = {name: read() for name, read in self.groups.items()}
        self._pids_before = self.by_pid() if self.by_pid else {}

    def stop(self, executes: int) -> None:
        assert self._before is not None, "stop() without start()"
        for name, read in self.groups.items():
            self.seconds[name] += read() - self._before[name]
        if self.by_pid is not None:
            for pid, seconds in self.by_pid().items():
                if pid in self._pids_before:  # one that started meanwhile is not a session's kernel
                    delta = seconds - self._pids_before[pid]
                    self.pid_seconds[pid] = self.pid_seconds.get(pid, 0.0) + delta
        self.executes += executes
        self._before = None

    def per_execute_ms(self) -> Json:
        seconds = dict(self.seconds)
        if self.by_pid is not None:
            seconds["session_kernel"] = max(self.pid_seconds.values(), default=0.0)
        out: Json = {
            name: round(1000.0 * s / self.executes, 3) if self.executes else None for name, s in seconds.items()
        }
        out["executes"] = self.executes
        return out


def pss_mib(procs: Iterable[psutil.Process]) -> float | None:
    """Total PSS of the processes in MiB (None when /proc does not show it)."""
    total = 0
    for proc in procs:
        try:
            total += getattr(proc.memory_full_info(), "pss", 0)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        except psutil.AccessDenied:
            return None
    return round(total / MIB, 1)


def tree_memory(pid: int) -> Json:
    """A server and its descendants (kernels, sandbox wrappers, warm pool): RSS of the server alone, and RSS
    and PSS of the whole tree in MiB. RSS counts every shared page once per process; PSS shares it out."""
    root = psutil.Process(pid)
    children = root.children(recursive=True)
    rss = 0
    for proc in [root, *children]:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
            rss += proc.memory_info().rss
    return {
        "process_rss_mib": round(root.memory_info().rss / MIB, 1),
        "process_pss_mib": pss_mib([root]),
        "tree_rss_mib": round(rss / MIB, 1),
        "tree_pss_mib": pss_mib([root, *children]),
        "processes": 1 + len(children),
    }


def added(after: Json, before: Json, key: str, per: int = 1) -> float | None:
    """How much ``key`` grew between two memory readings, divided by ``per``."""
    if after.get(key) is None or before.get(key) is None:
        return None
    return round((float(after[key]) - float(before[key])) / per, 1)
