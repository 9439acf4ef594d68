"""Arrival patterns as data: how many users are on at each second of a run, and which phase it is in.

``make_schedule`` builds a list of stages; a locust ``LoadTestShape`` (shape.py) and the compare driver both read
the same list, so the driver knows exactly when the ramp, the step and the saturation happened.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

# A working day compressed: share of the peak user count for each of 24 "hours" (night off, morning ramp,
# lunch dip, afternoon, evening off). Nights are at zero, so every model sees its idle action happen.
# The lunch dip lasts three hours, so users who leave for it are idle long enough to be scaled to zero.
DAY = (0, 0, 0, 0, 0, 0, 0.2, 0.5, 0.8, 1.0, 1.0, 0.8, 0.3, 0.3, 0.3, 1.0, 0.8, 0.5, 0.3, 0.2, 0, 0, 0, 0)


@dataclass(frozen=True)
class Stage:
    """``users`` on from ``start`` for ``duration`` seconds, spawned at ``rate`` users/s, in ``phase``."""

    start: float
    duration: float
    users: int
    rate: float
    phase: str

    @property
    def end(self) -> float:
        return self.start + self.duration


def _chain(parts: list[tuple[float, int, float, str]]) -> list[Stage]:
    stages, t = [], 0.0
    for duration, users, rate, phase in parts:
        stages.append(Stage(t, duration, users, rate, phase))
        t += duration
    return stages


def make_steady(users: int, duration: float) -> list[Stage]:
    return _chain([(duration, users, max(float(users), 1.0), "steady")])


def make_ramp(users: int, duration: float) -> list[Stage]:
    """From 1 to ``users``, one more user every ``duration / users`` seconds."""
    step = duration / users
    return _chain([(step, n, 50.0, "ramp") for n in range(1, users + 1)])


def make_burst(base: int, peak: int, before: float, hold: float) -> list[Stage]:
    return _chain([(before, base, 50.0, "before-burst"), (hold, peak, 100.0, "burst")])


def make_daily(
    peak: int,
    hour: float,
    day: tuple[float, ...] = DAY,
    first_hour: int = 0,
    hours: int | None = None,
    night_hour: float | None = None,
) -> list[Stage]:
    """A compressed day (or more): ``hour`` seconds per hour from ``first_hour`` for ``hours`` hours, ``peak``
    users at the busiest hours (at least one in any hour whose share is above zero). All in phase ``trace``.
    Hours with nobody on last ``night_hour`` seconds (default ``hour``): the night compressed further."""
    count = hours if hours is not None else len(day)
    shares = [day[(first_hour + h) % len(day)] for h in range(count)]
    night = hour if night_hour is None else night_hour
    return _chain(
        [(hour, max(1, round(s * peak)), 50.0, "trace") if s > 0 else (night, 0, 50.0, "trace") for s in shares]
    )


def shifted(stages: list[Stage], offset: float) -> list[Stage]:
    return [Stage(s.start + offset, s.duration, s.users, s.rate, s.phase) for s in stages]


def to_json(stages: list[Stage]) -> str:
    return json.dumps([[s.start, s.duration, s.users, s.rate, s.phase] for s in stages])


def from_json(text: str) -> list[Stage]:
    return [Stage(float(a), float(b), int(c), float(d), str(e)) for a, b, c, d, e in json.loads(text)]


def make_study(users: int, peak: int, ramp: float, steady: float, hold: float, saturation: float) -> list[Stage]:
    """The compare run's timeline: ramp 1..users, steady, a burst to ``peak``, back down, then saturation
    (the users' think time is zero in that phase)."""
    stages = make_ramp(users, ramp)
    t = stages[-1].end
    for duration, n, rate, phase in (
        (steady, users, 50.0, "steady"),
        (hold, peak, 100.0, "burst"),
        (saturation, users, 50.0, "saturation"),
    ):
        stages.append(Stage(t, duration, n, rate, phase))
        t += duration
    return stages


def make_schedule(kind: str, users: int, duration: float, peak: int | None = None) -> list[Stage]:
    """The named pattern over about ``duration`` seconds (``peak`` is the burst's or day's top)."""
    top = peak or users * 3
    if kind == "steady":
        return make_steady(users, duration)
    if kind == "ramp":
        return make_ramp(users, duration)
    if kind == "burst":
        return make_burst(users, top, duration / 3, duration * 2 / 3)
    if kind == "daily":
        return make_daily(peak or users, duration / len(DAY))
    if kind == "study":
        return make_study(users, top, duration * 0.2, duration * 0.3, duration * 0.35, duration * 0.15)
    raise ValueError(f"unknown arrival pattern {kind!r} (steady, ramp, burst, daily, study)")


def stage_at(stages: list[Stage], t: float) -> Stage | None:
    for stage in stages:
        if stage.start <= t < stage.end:
            return stage
    return None


def phase_windows(stages: list[Stage]) -> dict[str, tuple[float, float]]:
    """First start and last end of each phase name, in seconds from the run's start."""
    windows: dict[str, tuple[float, float]] = {}
    for s in stages:
        lo, hi = windows.get(s.phase, (s.start, s.end))
        windows[s.phase] = (min(lo, s.start), max(hi, s.end))
    return windows
