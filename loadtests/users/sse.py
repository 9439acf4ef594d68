"""Server-Sent Events user: ``POST /execute/stream`` on its own session, outputs read as they happen.

Events: ``stream open`` (the HTTP request, up to its headers), ``first output`` (request to the first
``output`` event), ``stream reply`` (request to the ``reply`` event; a reply that is not ``ok``, an ``error``
event or a stream without a reply is a failure). Run: ``locust -f loadtests/users/sse.py --host URL``.
"""

from __future__ import annotations

import time
from typing import Any

from locust import task

from loadtests.users import cells
from loadtests.users.base import SETTINGS, CellFailed, IdentifiedUser
from loadtests.users.protocol import parse_sse
from loadtests.users.settings import auth_headers


class SseUser(IdentifiedUser):
    session: str = ""

    def on_start(self) -> None:
        super().on_start()
        self.stream(cells.make_state_cell(f"sse-{self.identity}"), "state")

    def stream(self, code: str, kind: str) -> None:
        body: dict[str, Any] = {"code": code}
        if self.session:
            body["session"] = self.session
        started = time.perf_counter()
        headers = {**auth_headers(SETTINGS.token), "Accept": "text/event-stream"}
        reply: dict[str, Any] | None = None
        failure: BaseException | None = None
        with self.client.post(
            "/execute/stream",
            json=body,
            headers=headers,
            name="stream open",
            stream=True,
            catch_response=True,
            context={"kind": kind},
        ) as r:
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}")
                return
            seen_output = False
            for event in parse_sse(r.iter_lines(decode_unicode=True)):
                if event.event == "session":
                    self.session = str(event.data.get("session", self.session))
                elif event.event == "output" and not seen_output:
                    seen_output = True
                    self.fire("SSE", "first output", started, kind=kind)
                elif event.event == "reply":
                    reply = event.data
                elif event.event == "error":
                    failure = CellFailed(str(event.data.get("message")))
        if failure is None and reply is None:
            failure = CellFailed("stream ended without a reply")
        if failure is None and reply is not None and reply.get("status") != "ok":
            failure = CellFailed(f"cell {reply.get('status')}: {reply.get('error')}")
        self.fire("SSE", "stream reply", started, failure, kind=kind)

    @task
    def cell(self) -> None:
        chosen = cells.pick(self.rng)
        self.stream(chosen.code, chosen.kind)
