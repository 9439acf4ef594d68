"""Model (b), the study's Knative setup, as a stand-in: one Jupyter server with local kernels per user,
stopped when idle and started again by the user's next request (the activator stand-in, not Knative)."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field

from loadtests.common import free_port, package_version
from loadtests.compare import procs
from loadtests.compare.activator import Activator, Fronts
from loadtests.compare.model import USERS_DIR, LocustTarget, Model
from loadtests.compare.probe import Api


@dataclass
class PerUserModel(Model):
    locust_users: int = 16  # one front per locust identity, per idle user and for the probe, made up front
    idle_users: int = 50
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    fronts: Fronts | None = None
    by_name: dict[str, Activator] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.key, self.title = "peruser", "Per-user serverless (stand-in for Knative)"

    def start(self) -> None:
        self.fronts = Fronts()
        names = [f"lt{i}" for i in range(self.locust_users)] + [f"idle{i}" for i in range(self.idle_users)]
        for name in names:
            backend = procs.JupyterBackend(f"server-{name}", free_port(), self.workdir / name, token=self.token)
            self.by_name[name] = self.fronts.add(name, backend, self.idle_after)
        backend = procs.JupyterBackend("server-probe", free_port(), self.workdir / "probe", token=self.token)
        self.by_name["probe"] = self.fronts.add("probe", backend, self.idle_after)
        self.versions = {
            "jupyter_server": package_version("jupyter_server") or "?",
            "ipykernel": package_version("ipykernel") or "?",
        }
        self.components = ["one Jupyter server per user (local kernels)", "an activator per user (stand-in)"]
        self.notes = [
            "Stand-in: Knative is not run here. Each user's Jupyter server (with its own local kernels) sits behind "
            f"an activator of this driver that stops it after {self.idle_after:g} s without traffic and starts it "
            "again when the user's next request arrives (the request waits, as Knative's activator holds it). "
            "Memory and CPU count the servers and kernels, not the stand-in.",
        ]

    def close(self) -> None:
        if self.fronts is not None:
            self.fronts.close()
        super().close()

    def _fronts(self) -> list[Activator]:
        return list(self.by_name.values())

    def roots(self) -> list[int]:
        pids: list[int] = []
        for front in self._fronts():
            pids += front.backend.pids()  # type: ignore[attr-defined]
        return pids

    def servers(self) -> int:
        return sum(1 for f in self._fronts() if f.backend.running())

    def locust(self) -> LocustTarget:
        targets = [{"url": self.by_name[f"lt{i}"].url, "token": self.token} for i in range(self.locust_users)]
        return LocustTarget(
            [USERS_DIR / "jupyter.py"],
            targets[0]["url"],
            {"SKG_LT_TOKEN": self.token, "SKG_LT_TARGETS": json.dumps(targets)},
        )

    def user_api(self, name: str) -> Api:
        return Api(self.by_name[name].url, self.token)

    def set_idle_actions(self, on: bool) -> None:
        assert self.fronts is not None
        self.fronts.set_paused(not on)

    def idle_action_now(self) -> None:
        assert self.fronts is not None
        self.fronts.stop_all()
