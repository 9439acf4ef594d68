"""A session's frontends and who gets each of its kernel's messages.

Replies on shell, control and stdin go to the frontend whose request they answer (by the parent's ``msg_id``):
a WebSocket or a REST cell run. iopub goes to every attached WebSocket, and to the REST run whose cell it
belongs to. While no WebSocket is attached, what would have gone to the last one to leave is kept for its
reconnect (``replay.ReplayBuffer``).
"""

from __future__ import annotations

from ..types import Channel, KernelMessage, Subscriber
from .execution import CellRun
from .replay import ReplayBuffer

MAX_ROUTES = 10_000
"""Requests awaiting a reply, per session; past it the oldest (a frontend that never waits) are forgotten."""


class Frontends:
    """The attached WebSockets, the replay buffer of the last one to leave, and the route of every reply."""

    def __init__(self, replay_bytes: int) -> None:
        self.connections: set[Subscriber] = set()
        self.replay: ReplayBuffer | None = None
        self.routes: dict[str, Subscriber] = {}
        self._replay_bytes = replay_bytes

    def attach(self, conn: Subscriber, client_session: str | None = None) -> None:
        """A frontend connects. One that resumes the client session of the last one to leave first gets what
        the kernel said meanwhile (in order, before anything newer), and the replies still owed to it."""
        buffered, self.replay = self.replay, None
        if buffered is not None:
            resumes = client_session is not None and client_session == buffered.client_session
            for msg_id in [k for k, v in self.routes.items() if v is buffered]:
                if resumes:
                    self.routes[msg_id] = conn
                else:
                    del self.routes[msg_id]
            if resumes:
                for msg in buffered.drain():
                    conn.deliver(msg)
        self.connections.add(conn)

    def detach(self, conn: Subscriber, client_session: str | None, keep: bool) -> None:
        """A frontend leaves. If it was the last one, named its client session and ``keep`` (the session goes
        on), start keeping what the kernel says, and the replies owed to it, for its reconnect."""
        self.connections.discard(conn)
        keep = keep and client_session is not None and not self.connections
        if keep and self.replay is None:
            self.replay = ReplayBuffer(client_session or "", self._replay_bytes, max_messages=100_000)
        for msg_id in [k for k, v in self.routes.items() if v is conn]:
            if keep and self.replay is not None:
                self.routes[msg_id] = self.replay
            else:
                del self.routes[msg_id]

    def expect_reply(self, msg_id: str, conn: Subscriber) -> None:
        """``conn`` gets the reply to ``msg_id``; the oldest routes go past MAX_ROUTES."""
        self.routes[msg_id] = conn
        if len(self.routes) > MAX_ROUTES:
            # Oldest first (dicts keep insertion order); a REST cell's route stays until its cell is over.
            excess = len(self.routes) - MAX_ROUTES * 3 // 4
            for old in [k for k, v in self.routes.items() if not isinstance(v, CellRun)][:excess]:
                del self.routes[old]

    def dispatch(self, msg: KernelMessage) -> None:
        if msg.channel is Channel.IOPUB:
            route = self.routes.get(msg.parent_id)
            if route is not None and route not in self.connections and route is not self.replay:
                route.deliver(msg)
            self.broadcast(msg)
            return
        route = self.routes.get(msg.parent_id)
        if route is None:
            return
        if msg.channel is not Channel.STDIN and msg.msg_type.endswith("_reply") and not isinstance(route, CellRun):
            del self.routes[msg.parent_id]
        route.deliver(msg)

    def broadcast(self, msg: KernelMessage) -> None:
        """To every WebSocket, and kept for the one that left."""
        for conn in list(self.connections):
            conn.deliver(msg)
        if self.replay is not None:
            self.replay.deliver(msg)

    def iopub_for(self, route: Subscriber, msg: KernelMessage) -> None:
        """An iopub message of one request: to its frontend, and to every WebSocket, as iopub goes."""
        if route not in self.connections:
            route.deliver(msg)
        for conn in list(self.connections):
            conn.deliver(msg)

    def kernel_replaced(self) -> None:
        """The kernel was replaced: REST cells are told their cell was aborted (their routes stay until their
        runs end); the replies to every other request will never come."""
        for msg_id, route in list(self.routes.items()):
            if isinstance(route, CellRun):
                route.abort()
            else:
                del self.routes[msg_id]

    def close(self) -> None:
        """The session closed: REST cells are told their cell was aborted; nothing is routed or kept any more."""
        for route in self.routes.values():
            if isinstance(route, CellRun):
                route.abort()
        self.routes.clear()
        self.replay = None
