"""JupyterHub on one machine: DummyAuthenticator, local user servers, kernels on a Serverless Kernel Gateway.

Started by `python -m hub.local`, which starts the gateway first and passes everything through SKG_HUB_*
environment variables. Listens on 127.0.0.1 only. Each user's server is `jupyterhub-singleuser` (Jupyter
Server with JupyterLab) pointed at the gateway with --gateway-url; the token travels in the environment
(JUPYTER_GATEWAY_AUTH_TOKEN, read by GatewayClient) so it does not show in `ps`.
"""

import os
import shutil
import sys
from pathlib import Path

env = os.environ
runtime = Path(env["SKG_HUB_RUNTIME_DIR"])
gateway_url = env["SKG_HUB_GATEWAY_URL"]
bin_dir = Path(sys.executable).parent
c = get_config()  # type: ignore[name-defined]  # noqa: F821  (JupyterHub defines get_config)

c.JupyterHub.bind_url = f"http://127.0.0.1:{env['SKG_HUB_PORT']}"
c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{env['SKG_HUB_HUB_PORT']}"
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{env['SKG_HUB_PROXY_API_PORT']}"
c.ConfigurableHTTPProxy.command = [env["SKG_HUB_CHP"]]
c.ConfigurableHTTPProxy.pid_file = str(runtime / "jupyterhub-proxy.pid")
c.JupyterHub.db_url = f"sqlite:///{runtime / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(runtime / "jupyterhub_cookie_secret")
c.JupyterHub.pid_file = str(runtime / "jupyterhub.pid")
c.JupyterHub.cleanup_servers = True  # stop user servers when the hub stops
c.JupyterHub.log_level = env.get("SKG_HUB_LOG_LEVEL", "INFO")

c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = env["SKG_HUB_PASSWORD"]
c.Authenticator.allow_all = True
c.Authenticator.admin_users = {"admin"}

c.JupyterHub.spawner_class = "jupyterhub.spawner.SimpleLocalProcessSpawner"
c.SimpleLocalProcessSpawner.home_dir_template = str(runtime / "home" / "{username}")
c.Spawner.cmd = [str(bin_dir / "jupyterhub-singleuser")]
c.Spawner.default_url = "/lab"
c.Spawner.args = [
    f"--gateway-url={gateway_url}",
    "--GatewayClient.request_timeout=120",
    "--ServerApp.terminals_enabled=False",
    # An idle tab closes its gateway socket and answers JupyterLab's polls from memory (skg_jupyter).
    "--ServerApp.kernel_websocket_connection_class=skg_jupyter.IdleClosingGatewayWebSocketConnection",
    "--ServerApp.kernel_manager_class=skg_jupyter.CachingGatewayMappingKernelManager",
    "--ServerApp.kernel_spec_manager_class=skg_jupyter.CachingGatewayKernelSpecManager",
    "--ServerApp.session_manager_class=skg_jupyter.AdoptingGatewaySessionManager",
]
if os.geteuid() == 0:
    c.Spawner.args.append("--allow-root")  # demos and CI run as root; every server runs as this same user
c.Spawner.environment = {
    "JUPYTER_GATEWAY_AUTH_TOKEN": env.get("SKG_HUB_GATEWAY_TOKEN", ""),
    # jupyter_server forwards KERNEL_* to the gateway's kernels: a marker that kernels came from this hub.
    "KERNEL_SKG_HUB": "local",
    "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
}
c.Spawner.start_timeout = 60
c.Spawner.http_timeout = 60

# An admin API token (for scripts and the tests) when one is given.
if env.get("SKG_HUB_ADMIN_TOKEN"):
    c.JupyterHub.services = [{"name": "skg-local-admin", "api_token": env["SKG_HUB_ADMIN_TOKEN"]}]
    c.JupyterHub.load_roles = [
        {
            "name": "skg-local-admin",
            "scopes": ["admin:users", "admin:servers", "access:servers", "read:users", "list:users"],
            "services": ["skg-local-admin"],
        }
    ]

if not shutil.which(env["SKG_HUB_CHP"]):
    raise SystemExit(f"configurable-http-proxy not found at {env['SKG_HUB_CHP']}: npm ci --prefix hub/local")
