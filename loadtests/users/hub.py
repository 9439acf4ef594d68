"""JupyterHub user: logs in (the login form, with its _xsrf), gets an API token, spawns its server, runs cells
through the user's server (kernels API + channels behind the hub's proxy), and stops the server when it leaves.

Events: ``hub login``, ``hub token``, ``spawn`` (request to ready), ``stop server``, plus the Jupyter user's
(``connect``, ``first result``, ``warm execute``, ``state after idle``). A server the hub's idle culler stopped
is spawned again on the user's next cell, and the state check says what was lost. SKG_LT_HUB_STOP=0 leaves the
server running when the user leaves (the culler decides). Run:
``locust -f loadtests/users/hub.py --host http://HUB`` with SKG_LT_HUB_PASSWORD set.
"""

from __future__ import annotations

import re
import time

from loadtests.users.base import SETTINGS
from loadtests.users.jupyter import JupyterKernelUser
from loadtests.users.settings import auth_headers

SPAWN_TIMEOUT = 300.0
_tokens: dict[int, str] = {}


class HubUser(JupyterKernelUser):
    @property
    def username(self) -> str:
        return f"{SETTINGS.hub_prefix}{self.identity}"

    @property
    def hub(self) -> str:
        return str(self.host).rstrip("/")

    def server(self) -> tuple[str, str]:
        return f"{self.hub}/user/{self.username}", _tokens[self.identity]

    def login(self) -> str:
        page = self.client.get(f"{self.hub}/hub/login", name="hub login form")
        page.raise_for_status()
        found = re.search(r'name="_xsrf"\s+value="([^"]+)"', page.text)
        xsrf = found.group(1) if found else self.client.cookies.get("_xsrf", "")
        form = {"username": self.username, "password": SETTINGS.hub_password, "_xsrf": xsrf}
        with self.client.post(f"{self.hub}/hub/login", data=form, name="hub login", catch_response=True) as r:
            if "jupyterhub-session-id" not in self.client.cookies and not any(
                c.name.startswith("jupyterhub-hub-login") for c in self.client.cookies
            ):
                r.failure(f"login refused ({r.status_code})")
                raise PermissionError("hub login refused")
        xsrf = self.client.cookies.get("_xsrf", path="/hub/") or self.client.cookies.get("_xsrf", "") or xsrf
        r = self.client.post(
            f"{self.hub}/hub/api/users/{self.username}/tokens",
            json={"note": "loadtest", "expires_in": 86400},
            headers={"X-XSRFToken": xsrf},
            name="hub token",
        )
        r.raise_for_status()
        return str(r.json()["token"])

    def server_ready(self, token: str) -> tuple[bool, bool]:
        """(ready, pending) of the user's default server, as the hub sees it."""
        r = self.client.get(f"{self.hub}/hub/api/users/{self.username}", headers=auth_headers(token), name="hub user")
        r.raise_for_status()
        server = r.json().get("servers", {}).get("")
        return bool(server and server.get("ready")), bool(server and server.get("pending"))

    def ensure_server(self) -> None:
        if self.identity not in _tokens:
            _tokens[self.identity] = self.login()
        token = _tokens[self.identity]
        ready, pending = self.server_ready(token)
        if ready:
            return
        started = time.perf_counter()
        try:
            deadline = time.monotonic() + SPAWN_TIMEOUT
            while not ready:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"server of {self.username} not ready in {SPAWN_TIMEOUT:g} s")
                if not pending:  # (a server the culler is still stopping is pending too: wait it out)
                    with self.client.post(
                        f"{self.hub}/hub/api/users/{self.username}/server",
                        headers=auth_headers(token),
                        name="spawn request",
                        catch_response=True,
                    ) as r:
                        if r.status_code == 400:
                            r.success()  # already starting or running
                time.sleep(0.25)
                ready, pending = self.server_ready(token)
        except Exception as exc:
            self.fire("HUB", "spawn", started, exc)
            raise
        self.fire("HUB", "spawn", started)

    def on_stop(self) -> None:
        self.close_ws()
        token = _tokens.get(self.identity)
        if SETTINGS.hub_stop and token:
            self.client.delete(
                f"{self.hub}/hub/api/users/{self.username}/server", headers=auth_headers(token), name="stop server"
            )
        super().on_stop()
