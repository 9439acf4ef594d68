"""``skg serve``'s start, in the order that makes a cold start short.

A replica started by Knative to serve a request restores a session onto its first kernel: that kernel's boot is
most of the cold start, and the sandbox probe comes before it. So the probe starts first, in a thread, while
the sessions' modules are imported (their imports are deferred here for that reason); then the store and the
SessionManager are opened and the first kernel launched; then a thread imports the web framework and the
routes while the kernel boots in its own process. Nothing here imports FastAPI or uvicorn.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import importlib
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .kernels.options import sandbox_options, scratch_parent
from .kernels.sandbox import Sandbox, SandboxOptions, detect
from .settings import ENV_PREFIX, Settings

if TYPE_CHECKING:
    from notebook_state.store import StateStore

    from .metrics import Metrics
    from .sessions.manager import SessionManager

log = logging.getLogger(__name__)


def open_store(settings: Settings) -> tuple[StateStore, bytes]:
    """Redis when configured (replicas share sessions), else the embedded store in the data directory; and the
    signing key (checkpoints are signed with it, the inter-replica key is derived from it)."""
    from notebook_state.signing import load_or_create_key
    from notebook_state.store import LocalStore, RedisStore

    data_dir = settings.data_dir.resolve()
    store: StateStore
    if settings.redis_url is not None:
        password = settings.redis_password.get_secret_value() if settings.redis_password else None
        store = RedisStore(
            settings.redis_url.get_secret_value(),
            settings.session_ttl,
            password,
            cluster=settings.redis_cluster,
            timeout=settings.store_timeout,
            wait_replicas=settings.redis_wait_replicas,
        )
    else:
        store = LocalStore(data_dir / "store", settings.session_ttl)
    key = settings.signing_key_bytes or load_or_create_key(data_dir / "signing.key")
    return store, key


@dataclass
class Replica:
    """What the app's lifespan serves from: the store, the signing key, the metrics and the sessions."""

    store: StateStore
    key: bytes
    metrics: Metrics
    manager: SessionManager


def open_replica(settings: Settings, url: Callable[[], str]) -> Replica:
    from notebook_state.signing import Signer

    from .metrics import Metrics
    from .sessions.manager import SessionManager

    store, key = open_store(settings)
    metrics = Metrics()
    manager = SessionManager(settings, ENV_PREFIX, store, Signer(key), url, observer=metrics)
    return Replica(store, key, metrics, manager)


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket for uvicorn to listen on. Accepted connections inherit TCP_NODELAY on Linux, so no
    reply of a few hundred bytes waits ~40 ms for Nagle's algorithm (asyncio sets it too, under any loop)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    # Not listening yet: uvicorn listens once the app has started. Until then a connection is refused, not
    # parked in the backlog, so a replica restarted at the same address does not hold up the replicas that
    # forward to its predecessor: refused proves the predecessor gone, and they take its sessions over at once.
    sock.setblocking(False)
    return sock


def forbid_inspection_by_kernels() -> None:
    """Kernels run user code as this process's user; make this process non-dumpable so that code cannot read
    the service's environment or memory (tokens, the Redis password, the signing key) through /proc."""
    if not sys.platform.startswith("linux"):
        return
    pr_set_dumpable = 4
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_dumpable, 0, 0, 0, 0)
    except (OSError, AttributeError):
        log.warning("could not make the service process non-dumpable")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where installed, as uvicorn's ``loop="auto"`` picks (uvicorn[standard])."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


class EarlyProbe:
    """The sandbox probe, run in a thread from the first moment: its processes run while this one imports."""

    def __init__(self, options: SandboxOptions) -> None:
        self.options = options
        self._result: concurrent.futures.Future[Sandbox] = concurrent.futures.Future()
        self._parent = Path(tempfile.mkdtemp(prefix="skg-probe-", dir=scratch_parent()))
        if os.geteuid() == 0:
            self._parent.chmod(0o711)  # a kernel with a uid of its own must reach its directory
        threading.Thread(target=self._run, name="sandbox-probe", daemon=True).start()

    def _run(self) -> None:
        try:
            self._result.set_result(asyncio.run(detect(self.options, self._parent / "probe")))
        except BaseException as exc:
            self._result.set_exception(exc)
        finally:
            shutil.rmtree(self._parent, ignore_errors=True)

    async def detect(self, options: SandboxOptions, probe_dir: Path) -> Sandbox:
        """The KernelFactory's detector: this probe's verdict (the same options), else a probe now."""
        if options != self.options:
            return await detect(options, probe_dir)
        return await asyncio.wrap_future(self._result)


def run(settings: Settings) -> None:
    """Serve until stopped (SIGTERM drains first)."""
    forbid_inspection_by_kernels()  # before any kernel exists
    probe = EarlyProbe(sandbox_options(settings))
    sock = listening_socket(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(_serve(settings, sock, host, port, probe))


async def _serve(settings: Settings, sock: socket.socket, host: str, port: int, probe: EarlyProbe) -> None:
    url = settings.public_url(host, port)
    replica = open_replica(settings, lambda: url)
    replica.manager.kernels.detect = probe.detect
    replica.manager.prestart()
    # Importing the HTTP side takes about as long as a kernel's boot: in a thread, so that the loop launches
    # the kernel (and later talks to it) meanwhile.
    server = await asyncio.to_thread(importlib.import_module, f"{__package__}.server")
    await server.serve_replica(settings, replica, sock, host, port)
