"""Arrival patterns for any of the users: add this file to ``-f``
(``-f loadtests/users/rest.py,loadtests/users/shape.py``) and set SKG_LT_SHAPE to steady, ramp, burst, daily or
study, with SKG_LT_USERS, SKG_LT_PEAK and SKG_LT_DURATION (or SKG_LT_STAGES: the JSON of ``arrivals.to_json``,
as the compare driver passes its timeline).
"""

from __future__ import annotations

from locust import LoadTestShape

from loadtests.users.arrivals import from_json, make_schedule, stage_at
from loadtests.users.base import SETTINGS


class ArrivalShape(LoadTestShape):
    stages = (
        from_json(SETTINGS.stages)
        if SETTINGS.stages
        else make_schedule(SETTINGS.shape or "steady", SETTINGS.users, SETTINGS.duration, SETTINGS.peak)
    )

    def tick(self) -> tuple[int, float] | None:
        stage = stage_at(self.stages, self.get_run_time())  # type: ignore[no-untyped-call]
        return None if stage is None else (stage.users, stage.rate)

    def phase(self) -> str:
        stage = stage_at(self.stages, self.get_run_time())  # type: ignore[no-untyped-call]
        return "" if stage is None else stage.phase
