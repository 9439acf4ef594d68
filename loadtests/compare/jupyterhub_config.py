"""JupyterHub for model (a), the dedicated model: one Jupyter server per user with its own local kernels, as
KubeSpawner gives each user a pod; no checkpoints. Started by loadtests/compare/dedicated.py with SKG_CMP_*
variables; 127.0.0.1 only. The idle culler (jupyterhub-idle-culler) runs beside it when the driver lets it.
"""

import os
import sys
from pathlib import Path

env = os.environ
runtime = Path(env["SKG_CMP_RUNTIME"])
bin_dir = Path(sys.executable).parent
activity = env.get("SKG_CMP_ACTIVITY_INTERVAL", "1")
c = get_config()  # type: ignore[name-defined]  # noqa: F821  (JupyterHub defines get_config)

c.JupyterHub.bind_url = f"http://127.0.0.1:{env['SKG_CMP_PORT']}"
c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{env['SKG_CMP_HUB_PORT']}"
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{env['SKG_CMP_PROXY_API_PORT']}"
c.ConfigurableHTTPProxy.command = [env["SKG_CMP_CHP"]]
c.ConfigurableHTTPProxy.pid_file = str(runtime / "proxy.pid")
c.JupyterHub.db_url = f"sqlite:///{runtime / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(runtime / "cookie_secret")
c.JupyterHub.pid_file = str(runtime / "jupyterhub.pid")
c.JupyterHub.cleanup_servers = True
c.JupyterHub.log_level = "WARN"
# Activity is what the culler reads; in a compressed day it must be reported every few seconds, not 5 minutes.
c.JupyterHub.last_activity_interval = int(activity)
c.JupyterHub.concurrent_spawn_limit = 200
c.JupyterHub.active_server_limit = 0

c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = env["SKG_CMP_PASSWORD"]
c.Authenticator.allow_all = True

c.JupyterHub.spawner_class = "jupyterhub.spawner.SimpleLocalProcessSpawner"
c.SimpleLocalProcessSpawner.home_dir_template = str(runtime / "home" / "{username}")
c.Spawner.cmd = [str(bin_dir / "jupyterhub-singleuser")]
c.Spawner.args = ["--ServerApp.terminals_enabled=False", "--ServerApp.log_level=WARN"]
if os.geteuid() == 0:
    c.Spawner.args.append("--allow-root")
# The idle phase's users do nothing after their first cell, and 50 servers reporting every second cost the hub
# and the servers half a core (JupyterHub's default is 300 s): they report every 60 s, as an idle user's server
# would at most; the culler reads their idleness from the proxy's activity as well.
idle_activity = env.get("SKG_CMP_IDLE_ACTIVITY_INTERVAL", "60")


def activity_interval(spawner: object) -> str:
    name: str = spawner.user.name  # type: ignore[attr-defined]
    return idle_activity if name.startswith("idle") else activity


c.Spawner.environment = {
    "JUPYTERHUB_ACTIVITY_INTERVAL": activity_interval,
    "PATH": f"{bin_dir}{os.pathsep}{env['PATH']}",
}
c.Spawner.start_timeout = 300
# A server that died while starting fails its spawn after this (JupyterHub's default is 30 s; with 300 s one
# dead server of 50 held the idle phase for five minutes). A slow start on a busy machine still fits.
c.Spawner.http_timeout = 60

c.JupyterHub.services = [{"name": "skg-compare", "api_token": env["SKG_CMP_ADMIN_TOKEN"]}]
c.JupyterHub.load_roles = [
    {
        "name": "skg-compare",
        "scopes": [
            "admin:users",
            "admin:servers",
            "access:servers",
            "read:users",
            "list:users",
            "read:users:activity",
            "read:servers",
            "delete:servers",
        ],
        "services": ["skg-compare"],
    }
]
