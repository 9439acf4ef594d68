"""A jupyter_server gateway WebSocket connection that lets an idle tab's gateway socket close.

jupyter_server's :class:`GatewayWebSocketConnection` opens the gateway socket when the browser connects and
reopens it within about a second whenever it closes. To Knative an open WebSocket is a request in flight, so
an idle JupyterLab tab pins a gateway replica (knative/serving#10835), and Knative's queue-proxy, which cuts
WebSockets at its timeouts (knative/serving#16169), only causes an instant reconnect.

This subclass keeps the browser's socket and the gateway's socket apart:

- the gateway socket opens on the first message from the browser, not when the browser connects;
- it closes (cleanly, code 1000) after ``idle_timeout`` seconds without a message either way, unless a cell of
  this connection is still running;
- when the gateway side closes it (Knative's timeouts, the gateway's own idle timeout, a replica going away)
  it is reopened at once only if a cell is running (the gateway replays what the cell printed meanwhile);
  otherwise it stays closed until the browser sends something;
- while it is closed, a browser that reconnects gets its ``kernel_info_request`` answered from the kernel's
  last reply (needs :class:`skg_jupyter.CachingGatewayMappingKernelManager`), so a page reload or a socket
  cut between browser and server does not wake the gateway either;
- messages the gateway sends twice (a replay after a reconnect) reach the browser once.

The URL, headers and TLS settings of the gateway socket are the base class's (``connect()``), as is the
relay to the browser.
"""

from __future__ import annotations

import enum
import json
import random
from typing import Any

from jupyter_server.gateway.connections import GatewayWebSocketConnection
from jupyter_server.gateway.gateway_client import GatewayClient
from tornado.ioloop import IOLoop
from tornado.websocket import WebSocketClientConnection, WebSocketClosedError
from traitlets import Bool, Float

from .traffic import KernelLink, Msg, RecentIds, Traffic, local_kernel_info, msg_id, msg_type, parse
from .types import KernelLinks


class Upstream(enum.Enum):
    """The gateway socket of one browser connection."""

    CLOSED = "closed"  # none; the next message from the browser opens one
    CONNECTING = "connecting"
    OPEN = "open"
    CLOSING = "closing"  # closed by us for idleness, the close handshake is under way
    DONE = "done"  # the browser went away


_ACTIVE = frozenset({Upstream.CONNECTING, Upstream.OPEN, Upstream.CLOSING})


class IdleClosingGatewayWebSocketConnection(GatewayWebSocketConnection):
    """Set with ``--ServerApp.kernel_websocket_connection_class=skg_jupyter.IdleClosingGatewayWebSocketConnection``."""

    idle_timeout = Float(
        120.0,
        config=True,
        help="Seconds without a kernel message either way after which the gateway socket is closed, unless a "
        "cell of this connection is running. It reopens on the browser's next message. 0: never close it.",
    )
    kernel_info_from_cache = Bool(
        True,
        config=True,
        help="While the gateway socket is closed, answer a kernel_info_request (what a browser sends first on "
        "every (re)connect) from the kernel's last reply, if the kernel was idle, instead of waking the gateway.",
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.upstream = Upstream.CLOSED
        self.traffic = Traffic()
        self._queue: list[str | bytes] = []
        self._recent = RecentIds()
        self._attempts = 0
        self._last_activity = 0.0
        self._timer: object | None = None
        self._closing: WebSocketClientConnection | None = None
        self._kernel_link: KernelLink | None = None

    # -- state ---------------------------------------------------------------------------------------------

    @property
    def _link(self) -> KernelLink | None:
        # Looked up once: a kernel shut down while this connection lives must not get a fresh link from the
        # manager, or the count of open sockets would go wrong.
        if self._kernel_link is None and isinstance(self.multi_kernel_manager, KernelLinks):
            self._kernel_link = self.multi_kernel_manager.link(self.kernel_id)
        return self._kernel_link

    def _set(self, state: Upstream) -> None:
        """Every change of state goes here, so that the kernel manager's count of open gateway sockets (which
        decides whether the kernel list may come from its cache) stays exact."""
        was_active, now_active = self.upstream in _ACTIVE, state in _ACTIVE
        self.upstream = state
        link = self._link
        if link is not None and was_active != now_active:
            link.upstream += 1 if now_active else -1

    def _touch(self) -> None:
        loop = IOLoop.current()
        self._last_activity = loop.time()
        if self._timer is None and self.idle_timeout > 0 and self.upstream is Upstream.OPEN:
            self._timer = loop.call_later(self.idle_timeout, self._idle_check)

    def _idle_check(self) -> None:
        self._timer = None
        if self.upstream is not Upstream.OPEN or self.ws is None:
            return
        loop = IOLoop.current()
        left = self._last_activity + self.idle_timeout - loop.time()
        if left > 0 or self.traffic.busy:
            self._timer = loop.call_later(max(left, 0) or self.idle_timeout, self._idle_check)
            return
        self.log.info("Kernel %s: no traffic for %gs, closing the gateway socket", self.kernel_id, self.idle_timeout)
        self._closing = self.ws
        self._set(Upstream.CLOSING)
        self.ws.close(1000, "idle")

    # -- the browser side ----------------------------------------------------------------------------------

    async def connect(self) -> None:
        """The browser connected: nothing to do until it sends something."""
        self.log.info("Kernel %s: browser connected; the gateway socket opens on its first message", self.kernel_id)

    def disconnect(self) -> None:  # type: ignore[override]  # the base class's is synchronous too
        """The browser went away: close the gateway socket too, for good."""
        if self._timer is not None:
            IOLoop.current().remove_timeout(self._timer)
            self._timer = None
        self._queue.clear()
        super().disconnect()  # type: ignore[no-untyped-call]
        self._set(Upstream.DONE)

    def handle_incoming_message(self, message: str | bytes) -> None:
        """A message from the browser for the kernel."""
        if self.disconnected:
            return
        msg = parse(message)
        if self.upstream is Upstream.CLOSED and msg is not None and self._answer_locally(msg):
            return
        self.traffic.to_kernel(msg)
        self._touch()
        if self.upstream is Upstream.OPEN and self.ws is not None:
            self._send(message)
            return
        self._queue.append(message)
        if self.upstream is Upstream.CLOSED:
            self._open()

    def handle_outgoing_message(self, incoming_msg: str | bytes, *args: Any) -> None:
        """A message for the browser (binary frames stay binary, which the base class does not do)."""
        try:
            self.websocket_handler.write_message(incoming_msg, binary=isinstance(incoming_msg, bytes))
        except WebSocketClosedError:
            self.log.debug("Kernel %s: browser socket closed, message dropped", self.kernel_id)

    def _answer_locally(self, msg: Msg) -> bool:
        link = self._link
        if not self.kernel_info_from_cache or msg_type(msg) != "kernel_info_request":
            return False
        if link is None or not link.can_answer_kernel_info or link.info_reply is None:
            return False
        self.log.debug("Kernel %s: kernel_info_request answered from the kernel's last reply", self.kernel_id)
        for reply in local_kernel_info(msg, link.info_reply):
            self.handle_outgoing_message(json.dumps(reply))
        return True

    # -- the gateway side ----------------------------------------------------------------------------------

    def _send(self, message: str | bytes) -> None:
        assert self.ws is not None
        try:
            self.ws.write_message(message, binary=isinstance(message, bytes))
        except WebSocketClosedError:
            # The read loop sees the close and decides: reconnect (a cell is running) or wait.
            self.log.warning("Kernel %s: gateway socket closed while sending", self.kernel_id)

    def _open(self, delay: float = 0.0) -> None:
        self._set(Upstream.CONNECTING)
        IOLoop.current().call_later(delay, self._attempt)

    def _attempt(self) -> None:
        if self.disconnected or self.upstream is not Upstream.CONNECTING:
            return
        # The base class builds the URL (with ?session_id=, so a gateway can resume this connection's channel),
        # the auth headers and TLS options, and calls _read_messages when the attempt is done.
        IOLoop.current().spawn_callback(super().connect)

    async def _read_messages(self) -> None:
        """Called by the base class when a connection attempt is done; relays until the gateway socket closes."""
        ws = self.ws
        if ws is None:
            self._attempt_failed()
            return
        self._set(Upstream.OPEN)
        self._attempts = 0
        self._touch()
        queued, self._queue = self._queue, []
        for frame in queued:
            self._send(frame)
        while not self.disconnected:
            message: str | bytes | None
            try:
                message = await ws.read_message()
            except Exception as e:  # a reset or a TLS error: the same as a close
                self.log.warning("Kernel %s: reading from the gateway failed: %r", self.kernel_id, e)
                message = None
            if message is None:
                break
            self._from_kernel(message)
        self._closed(ws)

    def _from_kernel(self, message: str | bytes) -> None:
        msg = parse(message)
        if msg is not None:
            if self._recent.seen(msg_id(msg)):
                self.log.debug("Kernel %s: %s sent again by the gateway, dropped", self.kernel_id, msg_type(msg))
                return
            self.traffic.from_kernel(msg)
            link = self._link
            if link is not None:
                link.observe(msg)
        self._touch()
        self.handle_outgoing_message(message)

    def _closed(self, ws: WebSocketClientConnection) -> None:
        if self.ws is ws:
            self.ws = None
        deliberate, self._closing = self._closing is ws, None
        if self.disconnected:
            self._set(Upstream.DONE)
        elif self.traffic.busy or self._queue:
            # Cut under a running cell (or with messages waiting): resume now; the gateway replays what the
            # cell produced in between.
            why = "idle close raced a new message" if deliberate else f"cut (close code {ws.close_code})"
            self.log.info("Kernel %s: gateway socket %s; reconnecting", self.kernel_id, why)
            self._open()
        else:
            if not deliberate:
                self.log.info(
                    "Kernel %s: gateway socket closed by the far side (code %s) while idle; it reopens on the next "
                    "message",
                    self.kernel_id,
                    ws.close_code,
                )
            self._set(Upstream.CLOSED)

    def _attempt_failed(self) -> None:
        if self.disconnected:
            self._set(Upstream.DONE)
            return
        client = GatewayClient.instance()
        self._attempts += 1
        if self._attempts > client.gateway_retry_max:
            self.log.error(
                "Kernel %s: the gateway socket could not be opened in %d attempts; closing the browser's socket",
                self.kernel_id,
                self._attempts,
            )
            self._attempts = 0
            self._queue.clear()
            self._set(Upstream.CLOSED)
            # The browser shows the kernel as disconnected and reconnects by itself.
            self.websocket_handler.close(1011, "gateway unreachable")
            return
        delay = min(client.gateway_retry_interval * 2 ** (self._attempts - 1), client.gateway_retry_interval_max)
        delay += random.uniform(0.1, 1.0)
        self.log.info(
            "Kernel %s: gateway socket not opened; attempt %d/%d in %.1fs",
            self.kernel_id,
            self._attempts + 1,
            client.gateway_retry_max + 1,
            delay,
        )
        self._open(delay)
