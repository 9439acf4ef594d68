"""What every locust user here shares: who it is (an identity that comes back after idling), its think time,
request events for what is not plain HTTP, and the per-request samples file the compare report plots from.

Imports locust: load it only in a locust process, never in pytest or in the compare driver.
"""

from __future__ import annotations

import csv
import os
import random
import threading
import time
from dataclasses import dataclass
from typing import IO, Any

from locust import HttpUser, events
from locust.env import Environment

from loadtests.users.settings import Settings, make_settings

SETTINGS: Settings = make_settings(os.environ)


class StateLost(Exception):
    """A user came back and its variables were gone."""


class CellFailed(Exception):
    """A cell did not run to an ``ok`` reply."""


@dataclass
class Remembered:
    """What a user identity keeps across its visits: the kernel (session) it used and the value it stored."""

    kernel_id: str
    marker: str


class IdentityPool:
    """Users that leave give their identity back; a user that arrives takes the lowest free one, so the same
    people come back after idling (their kernels, per-user servers and hub accounts are theirs again)."""

    def __init__(self) -> None:
        self._taken: set[int] = set()
        self.remembered: dict[int, Remembered] = {}
        self._lock = threading.Lock()

    def claim(self) -> int:
        with self._lock:
            n = 0
            while n in self._taken:
                n += 1
            self._taken.add(n)
            return n

    def release(self, identity: int) -> None:
        with self._lock:
            self._taken.discard(identity)


_POOLS: dict[str, IdentityPool] = {}


def pool_for(user_class: type) -> IdentityPool:
    """Each user class has identities of its own: a REST user never comes back as a notebook user."""
    return _POOLS.setdefault(user_class.__name__, IdentityPool())


class _Samples:
    """Appends every request event of this process to SKG_LT_SAMPLES (one CSV line each, with its end time)."""

    def __init__(self) -> None:
        self._out: IO[str] | None = None
        self._writer: Any = None

    def write(self, row: list[object]) -> None:
        if not SETTINGS.samples:
            return
        if self._writer is None:
            self._out = open(SETTINGS.samples, "a", newline="")  # noqa: SIM115  (closed at quit)
            self._writer = csv.writer(self._out)
        self._writer.writerow(row)

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out, self._writer = None, None


SAMPLES = _Samples()


def _record(
    request_type: str,
    name: str,
    response_time: float,
    response_length: int,
    exception: BaseException | None = None,
    context: dict[str, Any] | None = None,
    **_: Any,
) -> None:
    ctx = context or {}
    error = "" if exception is None else f"{type(exception).__name__}: {exception}"[:200]
    row = [f"{time.time():.3f}", request_type, name, f"{response_time:.2f}", int(exception is None)]
    SAMPLES.write([*row, ctx.get("user", ""), ctx.get("kind", ""), error])


def _mark_start(environment: Environment, **_: Any) -> None:
    SAMPLES.write([f"{time.time():.3f}", "RUN", "test start", "0", 1, "", "", ""])


def _close(environment: Environment, **_: Any) -> None:
    SAMPLES.close()


events.request.add_listener(_record)  # type: ignore[no-untyped-call]
events.test_start.add_listener(_mark_start)  # type: ignore[no-untyped-call]
events.quitting.add_listener(_close)  # type: ignore[no-untyped-call]


def current_phase(environment: Environment) -> str:
    shape = environment.shape_class
    phase = getattr(shape, "phase", None)
    return str(phase()) if callable(phase) else ""


class IdentifiedUser(HttpUser):
    """An HTTP user with an identity, think time between cells (none in a saturation phase), events on demand."""

    abstract = True
    identity: int = -1

    @property
    def pool(self) -> IdentityPool:
        return pool_for(type(self))

    def on_start(self) -> None:
        self.identity = self.pool.claim()
        seed = SETTINGS.seed if SETTINGS.seed is not None else random.randrange(1 << 30)
        self.rng = random.Random(seed * 1000 + self.identity)

    def on_stop(self) -> None:
        self.pool.release(self.identity)

    def wait_time(self) -> float:
        if current_phase(self.environment) == "saturation":
            return 0.0
        return SETTINGS.think * self.rng.uniform(0.5, 1.5)

    def context(self) -> dict[str, Any]:
        return {"user": self.identity}

    def fire(
        self, request_type: str, name: str, started: float, exception: BaseException | None = None, **ctx: Any
    ) -> None:
        """A request event for something that is not one HTTP request (a WebSocket cell, a spawn, ...)."""
        self.environment.events.request.fire(
            request_type=request_type,
            name=name,
            response_time=(time.perf_counter() - started) * 1000.0,
            response_length=0,
            exception=exception,
            context={**self.context(), **ctx},
        )
