"""One kernel process and the single set of ZMQ channels through which the service talks to it.

Every frontend of a session (REST calls, any number of WebSockets) shares these channels; the session routes
replies by their parent's ``msg_id``. Sharing one set means the service sees every cell start and end, which is
what lets it serialise REST calls and, later, checkpoint after each cell.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hmac
import logging
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
from jupyter_client.manager import AsyncKernelManager
from jupyter_client.session import DELIM

from notebook_state.errors import StateError

from ..types import Channel, JSONDict, KernelListener, KernelMessage
from .memory_guard import MEMORY_EXIT
from .wire import Endpoint, Signer, Wire, signer

log = logging.getLogger(__name__)

_LIVENESS_INTERVAL = 0.5


class KernelState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DEAD = "dead"
    SHUT_DOWN = "shut_down"


class KernelStartFailed(StateError):
    """A kernel did not start (or answer) within its startup timeout."""


class KernelDied(Exception):
    """The kernel process exited while a request to it was in flight."""


class Kernel:
    """An ipykernel process started by jupyter_client, and the service's channels to it."""

    def __init__(
        self, km: AsyncKernelManager, name: str, kernel_id: str | None = None, directory: Path | None = None
    ) -> None:
        self.id = kernel_id or str(uuid.uuid4())
        self.name = name
        self.km = km
        self.directory = directory  # the kernel's own files (connection file, sockets, hand-overs): removed with it
        self.exit_code: int | None = None
        self.uid: int | None = None  # the uid of its own it runs as, when the sandbox gives it one
        self.memory_limit: int | None = None  # bytes of address space the kernel may use, once set
        self.forked = False  # forked from the replica's zygote (its preloaded modules come with it)
        self.captured = False  # the capture module was installed by the kernel itself, at start
        self.state = KernelState.STARTING
        self.listener: KernelListener | None = None
        self._session = km.session
        self._sign: Signer | None = None  # with the key the kernel was started with
        self._pack = km.session.pack
        self._wire: Wire | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._calls: dict[str, asyncio.Future[KernelMessage]] = {}
        # The service's own requests (checkpoints, env setup): their iopub traffic is not the frontends' business.
        self._internal: set[str] = set()
        self._iopub_seen = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def start(self, env: Mapping[str, str], timeout: float, cwd: Path | None = None) -> None:
        """Launch the process, connect the channels and wait until the kernel answers on shell and iopub."""
        try:
            launch: dict[str, Any] = {"env": dict(env)}
            if cwd is not None:
                launch["cwd"] = str(cwd)
            # asyncio.timeout, not wait_for: Python 3.11's wait_for loses a cancel that arrives as the wrapped
            # step finishes, and a start its caller cancelled (the pool's close) must stop.
            async with asyncio.timeout(timeout):
                await self.km.start_kernel(**launch)
            self._sign = signer(self._session.key, self._session.digest_mod)
            km = self.km
            # Where jupyter_client's own sockets would connect (its connection info), one channel each.
            endpoints = {c: Endpoint.of(km.transport, km.ip, getattr(km, f"{c.value}_port")) for c in Channel}
            self._wire = Wire(endpoints, self._session.bsession, self._receive)
            self._tasks = [asyncio.get_running_loop().create_task(self._watch_liveness())]
            async with asyncio.timeout(timeout):
                await self._wait_ready()
        except BaseException as exc:
            await self.shutdown(now=True)
            if isinstance(exc, (asyncio.TimeoutError, OSError, RuntimeError)):
                raise KernelStartFailed(f"kernel {self.name!r} did not start: {exc!r}") from exc
            raise
        self.state = KernelState.READY

    async def _wait_ready(self) -> None:
        # Ready once something arrives on iopub: from then on nothing the kernel publishes is lost, and requests
        # sent meanwhile wait in the shell socket's queue. ipykernel >= 7 greets each subscriber (iopub_welcome)
        # as soon as its iopub thread runs, before the kernel has finished initialising, so the first request
        # goes without waiting for a kernel_info round trip. An older kernel publishes only statuses, which a
        # SUB socket drops until its subscription has reached the kernel: so keep nudging with kernel_info.
        loop = asyncio.get_running_loop()
        seen = loop.create_task(self._iopub_seen.wait())
        try:
            while not seen.done():
                # Left running once iopub answers: its reply is still the service's, never a frontend's.
                nudge = loop.create_task(self.call(Channel.SHELL, "kernel_info_request", {}, timeout=1.0))
                nudge.add_done_callback(_retrieved)
                await asyncio.wait({nudge, seen}, return_when=asyncio.FIRST_COMPLETED)
                if nudge.done() and not seen.done():
                    failure = nudge.exception()
                    if failure is not None and not isinstance(failure, asyncio.TimeoutError):
                        raise failure
                    await asyncio.wait({seen}, timeout=0.2)
        finally:
            seen.cancel()

    async def shutdown(self, now: bool = False) -> None:
        """Stop the process and close the channels. Safe to call more than once."""
        if self.state is KernelState.SHUT_DOWN:
            return
        self.state = KernelState.SHUT_DOWN
        self.listener = None
        for task in self._tasks:
            task.cancel()
        if self._wire is not None:
            self._wire.close()
        self._fail_calls(KernelDied("kernel shut down"))
        with contextlib.suppress(Exception):
            if self.km.has_kernel:
                await self.km.shutdown_kernel(now=now)
        with contextlib.suppress(Exception):
            await self.km.cleanup_resources()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)

    def death_notice(self) -> str | None:
        """Why the process ended, when the service knows more than that it exited: its memory limit."""
        if self.exit_code != MEMORY_EXIT:
            return None
        limit = f" ({self.memory_limit / 1024**2:.0f} MiB)" if self.memory_limit else ""
        return (
            f"the cell went over the kernel's memory limit{limit}, so the kernel was stopped; the session "
            "continues on a fresh kernel with the state of its last checkpoint"
        )

    async def interrupt(self) -> None:
        if self.state is KernelState.READY:
            await self.km.interrupt_kernel()

    # -- sending -----------------------------------------------------------------------------------------

    def send(self, msg: KernelMessage) -> None:
        """Forward a frontend's message, keeping its header, so that replies name the frontend's msg_id."""
        wire = self._wire
        if wire is None or (self.state is not KernelState.READY and self.state is not KernelState.STARTING):
            raise KernelDied(f"kernel {self.id} is {self.state.value}")
        # As jupyter_client's Session.serialize packs and signs (its packer, our signer); the wire sends.
        pack = self._pack
        body = [pack(msg.header), pack(msg.parent_header), pack(msg.metadata), pack(msg.content)]
        sign = self._sign
        wire.send(msg.channel, [DELIM, sign(body) if sign is not None else b"", *body, *msg.buffers])

    def new_message(self, channel: Channel, msg_type: str, content: JSONDict) -> KernelMessage:
        """A message originated by the service, signed with this kernel's session."""
        m = self._session.msg(msg_type, content=content)
        header = dict(m["header"])
        header["date"] = header["date"].isoformat() if hasattr(header["date"], "isoformat") else header["date"]
        return KernelMessage(channel, header, {}, {}, content)

    async def call(self, channel: Channel, msg_type: str, content: JSONDict, timeout: float) -> KernelMessage:
        """Send a request of the service's own and wait for its reply (not seen by any frontend)."""
        msg = self.new_message(channel, msg_type, content)
        fut: asyncio.Future[KernelMessage] = asyncio.get_running_loop().create_future()
        self._calls[msg.msg_id] = fut
        if len(self._internal) > 1024:  # idle never came for some (kernel interrupted): forget them
            self._internal.clear()
        self._internal.add(msg.msg_id)
        try:
            self.send(msg)
            async with asyncio.timeout(timeout):  # a cancel is never lost to a reply in the same turn (see start)
                return await fut
        finally:
            self._calls.pop(msg.msg_id, None)

    async def execute_silent(self, code: str, timeout: float) -> JSONDict:
        """The service's own code (capture, restore, env): no history, no outputs to frontends."""
        content = {"code": code, "silent": True, "store_history": False, "user_expressions": {}, "allow_stdin": False}
        reply = await self.call(Channel.SHELL, "execute_request", content, timeout=timeout)
        return reply.content

    # -- receiving ---------------------------------------------------------------------------------------

    def _receive(self, channel: Channel, frames: list[bytes]) -> None:
        msg = self._decode(channel, frames)
        if msg is None:
            return
        parent = msg.parent_id
        if channel is Channel.IOPUB:
            self._iopub_seen.set()
            if parent in self._internal:
                if msg.msg_type == "status" and msg.content.get("execution_state") == "idle":
                    self._internal.discard(parent)
                return
        fut = self._calls.get(parent)
        if fut is not None and channel is not Channel.IOPUB:
            if not fut.done():
                fut.set_result(msg)
            return
        listener = self.listener
        if listener is not None:
            try:
                listener.on_kernel_message(msg)
            except Exception:
                log.exception("kernel %s: listener failed on %s", self.id, msg.msg_type)

    def _decode(self, channel: Channel, frames: list[bytes]) -> KernelMessage | None:
        try:
            idx = frames.index(DELIM)
        except ValueError:
            log.warning("kernel %s: message without delimiter on %s", self.id, channel.value)
            return None
        parts = frames[idx + 1 :]
        if len(parts) < 5:
            return None
        sign = self._sign
        if sign is not None and not hmac.compare_digest(sign(parts[1:5]), parts[0]):
            log.warning("kernel %s: bad signature on %s", self.id, channel.value)
            return None
        raw = parts[1:5]
        loads = orjson.loads
        try:
            header, parent, metadata, content = loads(raw[0]), loads(raw[1]), loads(raw[2]), loads(raw[3])
        except orjson.JSONDecodeError:
            log.warning("kernel %s: undecodable message on %s", self.id, channel.value)
            return None
        if type(header) is not dict or type(parent) is not dict or type(content) is not dict:
            # Everything downstream reads these as objects (msg_type, the parent's msg_id, execution_state): one
            # that is not would break the listener for every later message. (Metadata is looked at only in an
            # execute_reply, where the session passes a non-object through.)
            log.warning("kernel %s: a message on %s whose header or content is not an object", self.id, channel.value)
            return None
        return KernelMessage(channel, header, parent, metadata, content, parts[5:], raw)

    async def _watch_liveness(self) -> None:
        while True:
            await asyncio.sleep(_LIVENESS_INTERVAL)
            if self.state is KernelState.SHUT_DOWN:
                return
            try:
                alive = await self.km.is_alive()
            except Exception:
                alive = False
            if not alive:
                process = getattr(self.km.provisioner, "process", None)
                self.exit_code = getattr(process, "returncode", None)
                self.state = KernelState.DEAD
                self._fail_calls(KernelDied(f"kernel {self.id} exited"))
                listener = self.listener
                if listener is not None:
                    listener.on_kernel_died(self.id)
                return

    def _fail_calls(self, exc: Exception) -> None:
        for fut in self._calls.values():
            if not fut.done():
                fut.set_exception(exc)
        self._calls.clear()


def _retrieved(task: asyncio.Task[Any]) -> None:
    """A background request's outcome, taken so that asyncio does not report it as never retrieved."""
    if not task.cancelled():
        task.exception()
