"""Memory and CPU of a model's processes over time, read with psutil once per interval.

Memory is the sum of PSS (proportional set size: shared pages split between the processes that map them, so
the sum does not count a shared library once per process); CPU is user + system seconds, kept per process
(pid and start time) at the last value seen, so a process that exits keeps what it used up to its last sample.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil  # type: ignore[import-untyped]


@dataclass(frozen=True)
class Sample:
    t: float  # time.time()
    pss_mb: float
    cpu_s: float  # cumulative over every process seen so far
    processes: int
    servers: int  # servers, replicas or user servers up (what the model scales)


def tree(roots: list[int]) -> list[psutil.Process]:
    """The roots and all their descendants, from one pass over the process table (``children()`` reads the
    whole table once per root: with 50 roots and 300 processes that cost the driver most of a core)."""
    if not roots:
        return []
    kids: dict[int, list[psutil.Process]] = {}
    for p in psutil.process_iter(["ppid"]):
        kids.setdefault(p.info["ppid"], []).append(p)
    found: dict[int, psutil.Process] = {}
    for pid in roots:
        with contextlib.suppress(psutil.Error):
            stack = [psutil.Process(pid)]
            while stack:
                p = stack.pop()
                if p.pid not in found:
                    found[p.pid] = p
                    stack += kids.get(p.pid, [])
    return list(found.values())


def steady(window: list[Sample], tolerance: float = 0.03) -> bool:
    """Readings that agree: the same processes, and PSS within ``tolerance`` of each other."""
    pss = [s.pss_mb for s in window]
    return len({s.processes for s in window}) == 1 and max(pss) - min(pss) <= tolerance * max(max(pss), 1.0)


@dataclass
class Sampler:
    roots: Callable[[], list[int]]
    servers: Callable[[], int]
    interval: float = 1.0
    samples: list[Sample] = field(default_factory=list)
    _cpu: dict[tuple[int, float], float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def read(self) -> Sample:
        with self._lock:
            pss = 0.0
            procs = tree(self.roots())
            for p in procs:
                with contextlib.suppress(psutil.Error), p.oneshot():
                    key = (p.pid, p.create_time())
                    times = p.cpu_times()
                    self._cpu[key] = max(self._cpu.get(key, 0.0), times.user + times.system)
                    try:
                        pss += p.memory_full_info().pss
                    except (psutil.AccessDenied, AttributeError):
                        pss += p.memory_info().rss
            sample = Sample(time.time(), pss / 2**20, sum(self._cpu.values()), len(procs), self.servers())
            self.samples.append(sample)
            return sample

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):
                self.read()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def window(self, t0: float, t1: float) -> list[Sample]:
        return [s for s in self.samples if t0 <= s.t <= t1]
