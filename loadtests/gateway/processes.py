"""The gateways a run starts and reaches: this service (as many instances as a measure needs, with the embedded
store or a Redis), and how the benchmark waits for one to be ready."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from loadtests.common import HOST, BenchError, ManagedProcess

from .config import POOL_REFILL_TIMEOUT, REQUEST_TIMEOUT, STARTUP_TIMEOUT, Json

OURS = "serverless-kernel-gateway"


@dataclass
class Target:
    """A running gateway, as the benchmark reaches it."""

    name: str
    process: ManagedProcess
    url: str
    token: str

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[len("http") :]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=REQUEST_TIMEOUT)


@dataclass(frozen=True)
class OursSpec:
    """How to start this service: the same for every instance of one run but for what a measure overrides."""

    token: str
    pool_size: int
    checkpoint: bool
    store_env: Mapping[str, str]  # SKG_REDIS_URL and SKG_SIGNING_KEY, or nothing for the embedded store

    def command(self, data_dir: Path, *extra: str) -> list[str]:
        return [
            sys.executable, "-m", "kernel_gateway", "--port", "0", "--host", HOST, "--data-dir", str(data_dir),
            "--token", self.token, "--pool-size", str(self.pool_size), "--shutdown-grace", "5",
            *([] if self.checkpoint else ["--no-checkpoint"]), *extra,
        ]  # fmt: skip

    def spawn(self, name: str, data_dir: Path, *extra: str) -> ManagedProcess:
        """Exec a replica and return at once (a cold start is timed from here)."""
        data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.store_env}
        return ManagedProcess.start(name, self.command(data_dir, *extra), env, data_dir)

    def start(self, name: str, data_dir: Path, *extra: str) -> Target:
        """A replica that listens, with its warm pool full."""
        proc = self.spawn(name, data_dir, *extra)
        try:
            if not proc.listening.wait(STARTUP_TIMEOUT) or proc.url is None:
                raise BenchError(f"{name} did not start:\n{proc.tail()}")
            target = Target(name, proc, proc.url, self.token)
            with target.client() as client:
                wait_pool_full(target, client, STARTUP_TIMEOUT)
        except BaseException:
            proc.stop()
            raise
        return target


def wait_http_ok(proc: ManagedProcess, url: str, headers: dict[str, str], timeout: float) -> httpx.Response:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        proc.check_alive()
        try:
            response = httpx.get(url, headers=headers, timeout=5.0)
            if response.status_code == 200:
                return response
            last = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.1)
    raise BenchError(f"{proc.name}: {url} not OK within {timeout:g} s ({last}):\n{proc.tail()}")


def wait_pool_full(target: Target, client: httpx.Client, timeout: float = POOL_REFILL_TIMEOUT) -> Json:
    deadline = time.monotonic() + timeout
    body: Json = {}
    while time.monotonic() < deadline:
        target.process.check_alive()
        with contextlib.suppress(httpx.HTTPError, ValueError):
            body = client.get("/readyz").json()
            if body.get("pool_ready", 0) >= body.get("pool_size", 0) and not body.get("draining"):
                return body
        time.sleep(0.05)
    raise BenchError(f"{target.name}: the warm pool did not refill within {timeout:g} s (last /readyz: {body})")


def wait_stored(client: httpx.Client, session_ids: Sequence[str], timeout: float) -> None:
    """Until ``GET /sessions/{id}`` says each session is only in the store: evicted, its kernel stopped."""
    deadline = time.monotonic() + timeout
    waiting = list(session_ids)
    last: Json = {}
    while waiting and time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            last = client.get(f"/sessions/{waiting[0]}").json()
            if last.get("state") == "stored":
                waiting.pop(0)
                continue
        time.sleep(0.1)
    if waiting:
        raise BenchError(f"{len(waiting)} session(s) not evicted within {timeout:g} s (last: {last})")


def kernelspec_argv(client: httpx.Client) -> list[str] | None:
    with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
        argv: list[str] = client.get("/api/kernelspecs/python3").json()["spec"]["argv"]
        return argv
    return None


def sandbox_of(proc: ManagedProcess) -> str | None:
    """The kernel sandbox the service reported in its log when it started its first kernel."""
    for line in list(proc.log):
        with contextlib.suppress(ValueError, AttributeError):
            msg = str(json.loads(line).get("msg", ""))
            if msg.startswith("kernel sandbox:"):
                return msg.removeprefix("kernel sandbox:").strip()
    return None


def describe(target: Target, client: httpx.Client, spec: OursSpec) -> Json:
    return {
        "url": target.url,
        "pid": target.process.pid,
        "pool_size": spec.pool_size,
        "checkpoint_per_cell": spec.checkpoint,
        "store": "redis" if spec.store_env else "embedded",
        "sandbox": sandbox_of(target.process),
        "kernelspec_argv": kernelspec_argv(client),
    }
