"""Starting real service processes for tests: ``skg serve`` on a free loopback port, stopped and reaped after."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx

STARTUP_TIMEOUT = 90.0


@dataclass
class Service:
    """A running ``skg serve`` process."""

    proc: subprocess.Popen[str]
    url: str
    token: str | None
    log: list[str] = field(default_factory=list)

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[len("http") :]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"} if self.token else {}

    def client(self, timeout: float = 60.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=timeout)

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode}:\n" + "".join(self.log))
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError("service not ready in time:\n" + "".join(self.log))

    def wait_exit(self, timeout: float) -> int:
        """The exit status, once the service exits by itself; if it does not, what it was doing (its Python
        stacks, by py-spy) and its log go into the failure, so that a hang names its cause."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            dump = subprocess.run(
                [str(Path(sys.executable).with_name("py-spy")), "dump", "--pid", str(self.proc.pid)],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            raise AssertionError(
                f"service still running {timeout} s later; its stacks:\n{dump.stdout}{dump.stderr}\n"
                "its log (end):\n" + "".join(self.log)[-20_000:]
            ) from None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def _pump(proc: subprocess.Popen[str], log: list[str], found: threading.Event, box: list[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        log.append(line)
        if line.startswith("SKG_LISTENING ") and not found.is_set():
            box.append(line.split()[1])
            found.set()
    found.set()


def start_service(
    tmp_path: Path,
    args: Sequence[str] = (),
    token: str | None = None,
    env: dict[str, str] | None = None,
    ready: bool = True,
) -> Service:
    """Start ``python -m kernel_gateway`` on 127.0.0.1 port 0; return once it listens (and is ready)."""
    cmd = [sys.executable, "-m", "kernel_gateway", "--port", "0", "--data-dir", str(tmp_path / "skg"), *args]
    if token:
        cmd += ["--token", token]
    proc_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=proc_env, start_new_session=True
    )
    log: list[str] = []
    found = threading.Event()
    box: list[str] = []
    threading.Thread(target=_pump, args=(proc, log, found, box), daemon=True).start()
    if not found.wait(STARTUP_TIMEOUT) or not box:
        _kill_group(proc)
        raise RuntimeError("service did not start:\n" + "".join(log))
    service = Service(proc, box[0], token, log)
    if ready:
        try:
            service.wait_ready()
        except BaseException:
            _kill_group(proc)  # a service that never became ready must not outlive the test that started it
            raise
    return service


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(10)


@contextmanager
def running_service(tmp_path: Path, args: Sequence[str] = (), **kw: object) -> Iterator[Service]:
    service = start_service(tmp_path, args, **kw)  # type: ignore[arg-type]
    try:
        yield service
    finally:
        service.stop()
        # Kernels live in the service's process group; make sure none outlive a failed test.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(service.proc.pid, signal.SIGKILL)
