"""Model (c), this project: gateway replicas behind nginx (round robin, nothing sticky), one redis-server,
idle kernels evicted to Redis, each replica stopped when idle and started again on its next request (the
activator stand-in). Notebook users reach it through a Jupyter server pointed at the gateway; programs use
its REST and Jupyter APIs directly."""

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
class GatewayModel(Model):
    replicas: int = 2
    pool_size: int = 2
    evict_idle_after: float = 3.0
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    fronts: Fronts | None = None
    replica_fronts: list[Activator] = field(default_factory=list)
    notebook_front: Activator | None = None
    nginx_url: str = ""
    redis_url: str = ""

    def __post_init__(self) -> None:
        self.key, self.title = "gateway", "Stateless gateway (this project)"

    def start(self) -> None:
        redis_proc, self.redis_url = procs.start_redis(self.workdir / "redis")
        self.procs.append(redis_proc)
        key = secrets.token_hex(32)
        self.fronts = fronts = Fronts()
        for i in range(self.replicas):
            direct = free_port()
            backend = procs.GatewayReplica(
                f"replica-{i}",
                free_port(),
                self.workdir / f"replica-{i}",
                redis_url=self.redis_url,
                signing_key=key,
                token=self.token,
                evict_idle_after=self.evict_idle_after,
                pool_size=self.pool_size,
                advertise_port=direct,
            )
            self.replica_fronts.append(fronts.add(f"replica-{i}", backend, self.idle_after, direct_port=direct))
        nginx, self.nginx_url = procs.start_nginx(self.workdir / "nginx", [a.port for a in self.replica_fronts])
        self.procs.append(nginx)
        notebook = procs.JupyterBackend(
            "jupyter-on-gateway",
            free_port(),
            self.workdir / "jupyter-on-gateway",
            token=self.token,
            gateway_url=self.nginx_url,
            gateway_token=self.token,
        )
        self.notebook_front = fronts.add("jupyter-on-gateway", notebook, self.idle_after)
        for front in self.replica_fronts:
            fronts.start(front)
        self.versions = {
            "serverless-kernel-gateway": package_version("serverless-kernel-gateway") or "?",
            "redis-server": procs.redis_version(self.redis_url),
            "nginx": procs.nginx_version(),
            "jupyter_server": package_version("jupyter_server") or "?",
        }
        self.components = [
            "nginx (1 master + 1 worker)",
            f"{self.replicas} gateway replicas (skg serve, {self.pool_size} warm kernels each)",
            "redis-server",
            "a Jupyter server per notebook user, pointed at the gateway (no kernels; skg_jupyter managers)",
        ]
        self.notes = [
            f"{self.replicas} replicas behind nginx {self.versions['nginx']} round robin (no stickiness); "
            f"one redis-server; idle kernels evicted to Redis after {self.evict_idle_after:g} s; a replica is "
            f"stopped after {self.idle_after:g} s without traffic and started by its next request "
            "(stand-in for Knative's scale to zero, as in model b). A replica forwards to the owner of a session "
            "through the owner's front (as through its queue-proxy on a cluster), so that traffic keeps the owner "
            "up; a stopped owner's address refuses, and the session is taken over from Redis. Notebook users' "
            "Jupyter server runs skg_jupyter's managers (as the README configures it) and is scaled to zero too; "
            "its notebooks find their kernels again through its session database.",
        ]

    @property
    def settle_s(self) -> float:
        # Idle kernels are evicted ``evict_idle_after`` after their last cell, found by a sweep every quarter
        # of that; the readings that follow wait until the evictions are over.
        return self.evict_idle_after * 1.25 + 0.5

    def close(self) -> None:
        if self.fronts is not None:
            self.fronts.close()
        super().close()

    def roots(self) -> list[int]:
        pids = [p.pid for p in self.procs if p.alive()]
        for front in self.replica_fronts:
            pids += front.backend.pids()  # type: ignore[attr-defined]
        if self.notebook_front is not None:
            pids += self.notebook_front.backend.pids()  # type: ignore[attr-defined]
        return pids

    def servers(self) -> int:
        return sum(1 for f in self.replica_fronts if f.backend.running())

    def locust(self) -> LocustTarget:
        return LocustTarget([USERS_DIR / "jupyter.py"], self.nginx_url, {"SKG_LT_TOKEN": self.token})

    def rest_locust(self) -> LocustTarget:
        return LocustTarget([USERS_DIR / "rest.py", USERS_DIR / "sse.py"], self.nginx_url, {"SKG_LT_TOKEN": self.token})

    def user_api(self, name: str) -> Api:
        if name.startswith("notebook") and self.notebook_front is not None:
            return Api(self.notebook_front.url, self.token, notebook=f"{name}.ipynb")
        return Api(self.nginx_url, self.token)

    def probe_apis(self) -> dict[str, str]:
        return {"Jupyter API via nginx": "probe", "JupyterLab server pointed at the gateway": "notebook-probe"}

    def set_idle_actions(self, on: bool) -> None:
        assert self.fronts is not None
        self.fronts.set_paused(not on)

    def idle_action_now(self) -> None:
        # The notebook server first: a request it makes to the gateway as it stops would wake a replica
        # stopped before it.
        assert self.fronts is not None and self.notebook_front is not None
        self.fronts.stop(self.notebook_front)
        self.fronts.stop_all()

    def targets_json(self) -> str:
        return json.dumps([{"url": self.nginx_url, "token": self.token}])
