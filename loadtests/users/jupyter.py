"""Jupyter WebSocket user: the kernels API plus the channels protocol, as JupyterLab speaks them.

Events: ``start kernel`` / ``kernel lookup`` (HTTP), ``connect`` (WebSocket open), ``first result`` (from the
user's arrival to its first cell's result, whatever had to start on the way), ``state after idle`` (a user
back after idling: a failure named StateLost when its variables were gone), ``warm execute`` (each cell after
that, with its kind in the samples). A closed socket or a failed cell makes the next cell reconnect, as a
browser tab would. Run: ``locust -f loadtests/users/jupyter.py --host URL`` with SKG_LT_TOKEN set (or
SKG_LT_TARGETS, one server per user).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import websocket
from locust import task

from loadtests.users import cells
from loadtests.users.base import SETTINGS, CellFailed, IdentifiedUser, Remembered, StateLost
from loadtests.users.protocol import CellOutcome, decode, execute_request
from loadtests.users.settings import auth_headers

CELL_TIMEOUT = 120.0


class JupyterKernelUser(IdentifiedUser):
    """The protocol part; subclasses say where the user's Jupyter server is and how it gets started."""

    abstract = True
    ws: websocket.WebSocket | None = None
    kernel_id: str = ""

    def server(self) -> tuple[str, str]:
        """(base URL, token) of this user's Jupyter API: one of SKG_LT_TARGETS by identity, else --host."""
        if SETTINGS.targets:
            target = SETTINGS.targets[self.identity % len(SETTINGS.targets)]
            return target.url, target.token
        return str(self.host).rstrip("/"), SETTINGS.token

    def ensure_server(self) -> None:
        """Make sure the user's server exists (a hub user spawns it here); a plain server is just there."""

    def on_start(self) -> None:
        super().on_start()
        try:
            self.arrive()
        except Exception:
            self.close_ws()

    def on_stop(self) -> None:
        self.close_ws()
        super().on_stop()

    def close_ws(self) -> None:
        if self.ws is not None:
            ws, self.ws = self.ws, None
            try:
                ws.close(timeout=2)
            except Exception:
                ws.shutdown()  # type: ignore[no-untyped-call]

    def arrive(self) -> None:
        """Arrive (or come back): find the kernel this identity used, or start one; connect; first result."""
        started = time.perf_counter()
        self.ensure_server()
        base, token = self.server()
        known = self.pool.remembered.get(self.identity)
        self.kernel_id = ""
        if known is not None:
            with self.client.get(
                f"{base}/api/kernels/{known.kernel_id}",
                headers=auth_headers(token),
                name="kernel lookup",
                catch_response=True,
            ) as r:
                if r.status_code == 200:
                    self.kernel_id = known.kernel_id
                    r.success()
                elif r.status_code == 404:
                    r.success()  # the kernel is gone: the state check below counts it
        if not self.kernel_id:
            r = self.client.post(
                f"{base}/api/kernels", json={"name": "python3"}, headers=auth_headers(token), name="start kernel"
            )
            r.raise_for_status()
            self.kernel_id = r.json()["id"]
        connecting = time.perf_counter()
        ws_url = "ws" + base[len("http") :] + f"/api/kernels/{self.kernel_id}/channels"
        try:
            self.ws = websocket.create_connection(
                ws_url, header=[f"{k}: {v}" for k, v in auth_headers(token).items()], timeout=CELL_TIMEOUT
            )
        except Exception as exc:
            self.fire("WS", "connect", connecting, exc)
            raise
        self.fire("WS", "connect", connecting)
        if known is None:
            marker = f"u{self.identity}-{uuid.uuid4().hex[:8]}"
            self.run_cell(cells.make_state_cell(marker), "first result", started, kind="state")
            self.pool.remembered[self.identity] = Remembered(self.kernel_id, marker)
            return
        outcome = self.run_cell(cells.STATE_CHECK, "first result", started, kind="state check")
        lost = None if cells.state_kept(outcome.stdout, known.marker) else StateLost(f"user {self.identity}")
        self.fire("STATE", "state after idle", started, lost)
        if lost is not None:
            self.run_cell(cells.make_state_cell(known.marker), "restore by hand", time.perf_counter())
        self.pool.remembered[self.identity] = Remembered(self.kernel_id, known.marker)

    def run_cell(self, code: str, name: str, started: float, **ctx: Any) -> CellOutcome:
        """One execute_request over the socket, fired as one event; raises (after firing) when it failed."""
        assert self.ws is not None
        request = execute_request(code, session=f"loadtest-{self.identity}")
        outcome = CellOutcome(request["header"]["msg_id"])
        deadline = time.monotonic() + CELL_TIMEOUT
        try:
            self.ws.send(json.dumps(request))
            while not outcome.done:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no reply in {CELL_TIMEOUT:g} s")
                frame = self.ws.recv()
                if not frame:
                    raise ConnectionError("WebSocket closed")
                outcome.feed(decode(frame))
            if outcome.status != "ok":
                raise CellFailed(outcome.error or str(outcome.status))
        except Exception as exc:
            self.fire("WS", name, started, exc, **ctx)
            self.close_ws()
            raise
        self.fire("WS", name, started, **ctx)
        return outcome

    @task
    def cell(self) -> None:
        if self.ws is None:
            # The socket broke, or the server went away: come back as a browser tab would.
            self.arrive()
            return
        chosen = cells.pick(self.rng)
        self.run_cell(chosen.code, "warm execute", time.perf_counter(), kind=chosen.kind)


class JupyterWsUser(JupyterKernelUser):
    """A notebook user on a Jupyter server or the gateway's Jupyter face."""
