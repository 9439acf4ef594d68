"""Model (a), the KubeSpawner model on one machine: the real JupyterHub and configurable-http-proxy, one
Jupyter server per user with local kernels, and JupyterHub's idle culler (jupyterhub-idle-culler). Whatever
a culled server's kernels held is lost."""

from __future__ import annotations

import contextlib
import json
import secrets
import sys
import time
from dataclasses import dataclass, field

import httpx
import psutil  # type: ignore[import-untyped]

from hub.local.__main__ import ensure_chp
from loadtests.common import BenchError, ManagedProcess, free_port, package_version
from loadtests.compare import procs
from loadtests.compare.model import USERS_DIR, LocustTarget, Model
from loadtests.compare.probe import Api

HERE = procs.REPO / "loadtests" / "compare"
SPAWN_TIMEOUT = 300.0


def wait_progress(admin: httpx.Client, name: str) -> None:
    """Until the pending spawn of ``name`` ends (ready or failed), on the hub's progress event stream, as
    JupyterHub's spawn page waits: one request, not one every fraction of a second (each costs the hub a few
    ms of CPU, counted as the model's, and with eight spawns at once that was a fifth of a core)."""
    with admin.stream("GET", f"/hub/api/users/{name}/server/progress") as r:
        if r.status_code != 200:  # (400: not pending any more; the caller looks again, not at once)
            time.sleep(0.2)
            return
        for line in r.iter_lines():
            if line.startswith("data:") and {"ready", "failed"} & set(json.loads(line[5:])):
                return


@dataclass
class DedicatedModel(Model):
    password: str = field(default_factory=lambda: secrets.token_hex(8))
    admin_token: str = field(default_factory=lambda: secrets.token_hex(16))
    hub: ManagedProcess | None = None
    culler: ManagedProcess | None = None
    url: str = ""

    def __post_init__(self) -> None:
        self.key, self.title = "dedicated", "Dedicated server per user (JupyterHub, KubeSpawner model)"

    def start(self) -> None:
        runtime = self.workdir / "hub"
        (runtime / "home").mkdir(parents=True, exist_ok=True)
        port = free_port()
        env = procs.clean_env(
            {
                "SKG_CMP_RUNTIME": str(runtime),
                "SKG_CMP_PORT": str(port),
                "SKG_CMP_HUB_PORT": str(free_port()),
                "SKG_CMP_PROXY_API_PORT": str(free_port()),
                "SKG_CMP_CHP": str(ensure_chp()),
                "SKG_CMP_PASSWORD": self.password,
                "SKG_CMP_ADMIN_TOKEN": self.admin_token,
            }
        )
        cmd = [sys.executable, "-m", "jupyterhub", "-f", str(HERE / "jupyterhub_config.py")]
        self.hub = ManagedProcess.start("jupyterhub", cmd, env, runtime, tag=procs.TAG)
        self.procs.append(self.hub)
        self.url = f"http://127.0.0.1:{port}"
        procs.wait_http(f"{self.url}/hub/api", self.hub)
        self.versions = {
            name: package_version(name) or "?"
            for name in ("jupyterhub", "jupyterhub-idle-culler", "jupyter_server", "ipykernel")
        }
        self.components = [
            "JupyterHub",
            "configurable-http-proxy",
            "jupyterhub-idle-culler",
            "one Jupyter server per user (local kernels)",
        ]
        self.notes = [
            f"JupyterHub {self.versions['jupyterhub']} with SimpleLocalProcessSpawner (one jupyterhub-singleuser "
            "per user, local kernels, no checkpoints), configurable-http-proxy, and jupyterhub-idle-culler "
            f"{self.versions['jupyterhub-idle-culler']} culling servers idle for {self.idle_after:g} s "
            "(the same idle time as the other models' scale to zero). Servers report activity every 1 s (the "
            "locust users, so that the culler never takes an active server in the compressed day), or every "
            "60 s (the idle phase's users, who do nothing; JupyterHub's default is 300 s)."
        ]

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"token {self.admin_token}"}, timeout=60)

    def roots(self) -> list[int]:
        return [p.pid for p in (self.hub, self.culler) if p is not None and p.alive()]

    def servers(self) -> int:
        count = 0
        for p in self._tree():
            with contextlib.suppress(psutil.Error):
                if any("jupyterhub-singleuser" in part for part in p.cmdline()[:2]):
                    count += 1
        return count

    def _tree(self) -> list[psutil.Process]:
        from loadtests.compare.sampler import tree

        return tree(self.roots())

    def locust(self) -> LocustTarget:
        env = {"SKG_LT_HUB_PASSWORD": self.password, "SKG_LT_HUB_PREFIX": "lt", "SKG_LT_HUB_STOP": "0"}
        return LocustTarget([USERS_DIR / "hub.py"], self.url, env)

    def spawn(self, name: str) -> None:
        """Create the user if needed and start its server (as the hub user's spawn does), until ready. A server
        the culler is still stopping is waited for, then spawned again."""
        with self.admin() as admin:
            admin.post(f"/hub/api/users/{name}")
            deadline = time.monotonic() + SPAWN_TIMEOUT
            while time.monotonic() < deadline:
                state = admin.get(f"/hub/api/users/{name}").json().get("servers", {}).get("")
                if state and state.get("ready"):
                    return
                if not state:
                    r = admin.post(f"/hub/api/users/{name}/server")
                    if r.status_code not in (201, 202, 400):
                        raise BenchError(f"spawn of {name}: {r.status_code} {r.text[:300]}")
                    state = {"pending": "spawn"}
                if state.get("pending") == "spawn":
                    wait_progress(admin, name)
                else:
                    time.sleep(0.2)  # (being stopped: the culler's stop is waited out, then spawned again)
        raise BenchError(f"server of {name} not ready in {SPAWN_TIMEOUT:g} s")

    def user_api(self, name: str) -> Api:
        self.spawn(name)
        return Api(f"{self.url}/user/{name}", self.admin_token)

    def set_idle_actions(self, on: bool) -> None:
        if on and self.culler is None:
            cmd = [
                sys.executable,
                "-m",
                "jupyterhub_idle_culler",
                f"--url={self.url}/hub/api",
                f"--timeout={max(1, round(self.idle_after))}",
                "--cull-every=1",
                "--concurrency=10",
            ]
            env = procs.clean_env({"JUPYTERHUB_API_TOKEN": self.admin_token})
            self.culler = ManagedProcess.start("idle-culler", cmd, env, self.workdir, tag=procs.TAG)
        elif not on and self.culler is not None:
            self.culler.stop(timeout=10)
            self.culler = None

    def idle_action_now(self) -> None:
        """Stop every user server through the hub API, as the culler does when a server's time is up."""
        with self.admin() as admin:
            users = admin.get("/hub/api/users").json()
            for user in users:
                if user.get("servers"):
                    admin.delete(f"/hub/api/users/{user['name']}/server")
        if not self.wait_servers(0, 120):
            raise BenchError("user servers did not stop")

    def close(self) -> None:
        self.set_idle_actions(False)
        super().close()
