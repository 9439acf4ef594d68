"""What a locust user is pointed at, from environment variables (so master and workers agree on it).

SKG_LT_TOKEN      token sent as ``Authorization: token <t>`` (a gateway, Jupyter server or JupyterHub token)
SKG_LT_TARGETS    JSON list of {"url", "token"?}: one base URL per user identity (per-user servers); else --host
SKG_LT_THINK      think time between cells, seconds (default 2)
SKG_LT_SHAPE      arrival pattern of shape.py: steady, ramp, burst, daily, study
SKG_LT_USERS / SKG_LT_PEAK / SKG_LT_DURATION   the pattern's parameters
SKG_LT_STAGES     JSON list of [start, duration, users, rate, phase] (overrides the named pattern)
SKG_LT_SAMPLES    CSV file: one line per request event, with its time (for plots over time)
SKG_LT_HUB_PASSWORD, SKG_LT_HUB_PREFIX, SKG_LT_HUB_STOP   hub user: password, user name prefix, stop on leave
SKG_LT_SEED       random seed of the cell mix
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    url: str
    token: str


@dataclass(frozen=True)
class Settings:
    token: str
    targets: tuple[Target, ...]
    think: float
    shape: str
    users: int
    peak: int | None
    duration: float
    stages: str
    samples: str
    hub_password: str
    hub_prefix: str
    hub_stop: bool
    seed: int | None


def make_settings(env: Mapping[str, str]) -> Settings:
    token = env.get("SKG_LT_TOKEN", "")
    targets = tuple(
        Target(str(t["url"]).rstrip("/"), str(t.get("token", token)))
        for t in json.loads(env.get("SKG_LT_TARGETS", "[]"))
    )
    peak = env.get("SKG_LT_PEAK")
    seed = env.get("SKG_LT_SEED")
    return Settings(
        token=token,
        targets=targets,
        think=float(env.get("SKG_LT_THINK", "2")),
        shape=env.get("SKG_LT_SHAPE", ""),
        users=int(env.get("SKG_LT_USERS", "4")),
        peak=int(peak) if peak else None,
        duration=float(env.get("SKG_LT_DURATION", "60")),
        stages=env.get("SKG_LT_STAGES", ""),
        samples=env.get("SKG_LT_SAMPLES", ""),
        hub_password=env.get("SKG_LT_HUB_PASSWORD", ""),
        hub_prefix=env.get("SKG_LT_HUB_PREFIX", "lt"),
        hub_stop=env.get("SKG_LT_HUB_STOP", "1") not in ("0", "false", "no"),
        seed=int(seed) if seed else None,
    )


def auth_headers(token: str) -> dict[str, str]:
    return {"Authorization": f"token {token}"} if token else {}
