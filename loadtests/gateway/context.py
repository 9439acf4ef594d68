"""One run's belongings: its configuration, token and scratch directory, the event loop thread, the Redis it
started, and every process, client and connection it opened, all closed again by ``close`` (also on error)."""

from __future__ import annotations

import contextlib
import secrets
import shutil
import tempfile
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import httpx

from loadtests.common import RedisServer, log

from .clients import Channels, LoopThread, close_all, open_all
from .config import STARTUP_TIMEOUT, Config, Json
from .processes import OursSpec, Target
from .raw import RawKernel
from .sampling import CpuReader, children_cpu, own_cpu


def progress(message: str) -> None:
    log("bench", message)


class Run:
    def __init__(self, config: Config, result: Json) -> None:
        self.config = config
        self.result = result
        self.token = secrets.token_hex(16)
        self.signing_key = secrets.token_hex(32)
        self.workdir = Path(tempfile.mkdtemp(prefix="skg-bench-"))
        self.stack = contextlib.ExitStack()
        self.stack.callback(shutil.rmtree, self.workdir, ignore_errors=True)
        self.loop = LoopThread()
        self.stack.callback(self.loop.close)
        self._redis: RedisServer | None = None
        # Raw and jupyter-kernel-gateway kernels keep IPython's history in memory-backed files, as this
        # service's sandboxed kernels do (a private tmpfs home): an fsync per cell on a shared disk costs some
        # machines tens of milliseconds, which would flatter the service beside its baselines.
        shm = Path("/dev/shm")
        self.ipython_dir = Path(tempfile.mkdtemp(prefix="skg-bench-ipython-", dir=shm if shm.is_dir() else None))
        self.stack.callback(shutil.rmtree, self.ipython_dir, ignore_errors=True)
        result["config"]["baseline_kernels_ipython_dir"] = str(self.ipython_dir)

    def close(self) -> None:
        self.stack.close()

    def later(self, coro_fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``coro_fn()`` on the loop thread when the run closes (before the loop itself stops)."""
        self.stack.callback(lambda: self.loop.run(coro_fn(), timeout=60))

    # -- Redis and our service ---------------------------------------------------------------------------------

    @property
    def redis(self) -> RedisServer:
        """The run's Redis, started on first use: for --redis, and always for the replica cold start."""
        if self._redis is None:
            progress("starting redis-server")
            self._redis = RedisServer(self.workdir / "redis")
            self.stack.callback(self._redis.stop)
            self.result["environment"]["redis_server"] = self._redis.version()
            self.result["environment"]["redis_server_binary"] = self._redis.binary
        return self._redis

    def spec(self, redis: bool | None = None) -> OursSpec:
        """How to start our service: with the run's Redis when ``redis`` (default: --redis), else embedded."""
        use_redis = self.config.redis if redis is None else redis
        store_env = {"SKG_REDIS_URL": self.redis.url, "SKG_SIGNING_KEY": self.signing_key} if use_redis else {}
        return OursSpec(self.token, self.config.pool_size, self.config.checkpoint, store_env)

    def start_ours(self, name: str, *extra: str, redis: bool | None = None) -> tuple[Target, httpx.Client]:
        """An instance of our service that the run stops on close (or sooner, by ``target.process.stop()``)."""
        progress(f"starting {name} (pool size {self.config.pool_size}, {' '.join(extra) or 'defaults'})")
        target = self.spec(redis).start(name, self.workdir / name, *extra)
        self.stack.callback(target.process.stop)
        client = self.stack.enter_context(target.client())
        return target, client

    def service_cpu(self, target: Target) -> dict[str, CpuReader]:
        """CPU groups of a gateway: the process itself, its kernels, and the Redis it uses (if any)."""
        groups = {"service": own_cpu(target.process.pid), "kernels": children_cpu(target.process.pid)}
        if self.config.redis and target.name != "jupyter-kernel-gateway":
            groups["redis"] = own_cpu(self.redis.process.pid)
        return groups

    # -- clients -------------------------------------------------------------------------------------------------

    def raw_kernel(self, transport: str) -> RawKernel:
        raw = RawKernel(transport, self.workdir, {"IPYTHONDIR": str(self.ipython_dir)})
        self.later(raw.stop)
        self.loop.run(raw.start(), timeout=STARTUP_TIMEOUT + 10)
        return raw

    def channels(self, target: Target, kernel_ids: Sequence[str]) -> list[Channels]:
        channels = self.loop.run(open_all(target, kernel_ids), timeout=STARTUP_TIMEOUT)
        self.later(lambda: close_all(channels))
        return channels
