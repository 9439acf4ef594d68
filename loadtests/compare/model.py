"""What the driver needs from a deployment model, whichever it is."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

from loadtests.common import BenchError, ManagedProcess
from loadtests.compare.probe import Api

USERS_DIR = Path(__file__).resolve().parents[1] / "users"


@dataclass
class LocustTarget:
    files: list[Path]
    host: str
    env: dict[str, str]


@dataclass
class Model:
    """A deployment model running on this machine. Subclasses start it and say how users reach it."""

    key: str = ""
    title: str = ""
    workdir: Path = Path()
    idle_after: float = 6.0
    procs: list[ManagedProcess] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    components: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def settle_s(self) -> float:
        """How long idle users wait before their memory is read: the model's own idle policy (none here)."""
        return 0.0

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(timeout=30)

    def roots(self) -> list[int]:
        """Process ids whose trees are the model's cost (its own processes, not the stand-in's)."""
        raise NotImplementedError

    def servers(self) -> int:
        """How many of the units the model scales are up (user servers or replicas)."""
        raise NotImplementedError

    def locust(self) -> LocustTarget:
        raise NotImplementedError

    def user_api(self, name: str) -> Api:
        """The Jupyter API a user reaches (starting whatever must exist first, as the user's request would)."""
        raise NotImplementedError

    def probe_apis(self) -> dict[str, str]:
        """Extra paths to measure cold and warm starts on: label -> user name (the default path is '')."""
        return {"": "probe"}

    def set_idle_actions(self, on: bool) -> None:
        """Let the model's own idle action run (culler, scale to zero) or hold it off."""
        raise NotImplementedError

    def idle_action_now(self) -> None:
        """Do what the idle action would do, now: cull every server, or scale every unit to zero."""
        raise NotImplementedError

    def wait_servers(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.servers() == count:
                return True
            time.sleep(0.25)
        return False

    def ensure_running(self, name: str) -> None:
        """Before a warm measurement: the user's server (or the replicas) up."""
        asyncio.run(_touch(self.user_api(name)))


async def _touch(api: Api) -> None:
    async with api.client() as c:
        r = await c.get("/api/kernels")
        if r.status_code != 200:
            raise BenchError(f"{api.base}: GET /api/kernels answered {r.status_code}")
