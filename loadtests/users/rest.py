"""REST user: its own session on ``POST /execute``, running the cell mix with think time between cells.

Events: ``first result`` (the call that creates the session and stores the user's marker), ``warm execute``
(every cell after it; a reply whose status is not ``ok`` is a failure). Run:
``locust -f loadtests/users/rest.py --host URL`` with SKG_LT_TOKEN set when the service has a token.
"""

from __future__ import annotations

from typing import Any

from locust import task

from loadtests.users import cells
from loadtests.users.base import SETTINGS, IdentifiedUser
from loadtests.users.settings import auth_headers


class RestUser(IdentifiedUser):
    session: str = ""

    def on_start(self) -> None:
        super().on_start()
        self.execute(cells.make_state_cell(f"rest-{self.identity}"), "first result", "state")

    def execute(self, code: str, name: str, kind: str) -> None:
        body: dict[str, Any] = {"code": code}
        if self.session:
            body["session"] = self.session
        with self.client.post(
            "/execute",
            json=body,
            headers=auth_headers(SETTINGS.token),
            name=name,
            catch_response=True,
            context={"kind": kind},
        ) as r:
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}: {r.text[:200]}")
                return
            reply = r.json()
            self.session = reply.get("session", self.session)
            if reply.get("status") != "ok":
                r.failure(f"cell {reply.get('status')}: {reply.get('error')}")

    @task
    def cell(self) -> None:
        chosen = cells.pick(self.rng)
        self.execute(chosen.code, "warm execute", chosen.kind)
