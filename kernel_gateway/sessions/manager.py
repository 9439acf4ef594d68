"""The sessions of one replica, and THE decision of where a session lives.

A session lives in the store (record, lease, checkpoints); this replica holds a live kernel only for the
sessions whose lease it holds. Asking for any other session either names its live owner (the HTTP layer
forwards there) or takes it over: a new lease with a higher epoch, then ``opening.Opener`` puts it on a kernel
(``kernels.supply``) and restores it. Every face (REST, Jupyter API, WebSocket) asks here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from jupyter_client.kernelspec import NoSuchKernel

from notebook_state.checkpoint import Checkpointer
from notebook_state.signing import Signer
from notebook_state.store import LIST_LIMIT, Fence, SessionRecord, StateStore, StoreUnavailable
from notebook_state.types import StateObserver

from ..kernels.factory import KernelFactory
from ..kernels.launch import KernelSpecs
from ..kernels.options import scratch_parent
from ..kernels.supply import KernelSupply
from ..types import ManagerSettings
from .drain import save_all, wait_idle
from .errors import (
    Draining,
    KernelSpecNotFound,
    LeaseLost,
    LeaseUncertain,
    OwnedElsewhere,
    ReplicaFull,
    SessionExists,
    SessionNotFound,
    StoreDown,
)
from .execution import ExecutionResult, OutputCallback
from .housekeeping import LeaseKeeper, evict_idle, supervise
from .lease import HeldLease, now
from .opening import Opener
from .records import find, known_id, stored, validate_session_id
from .rest_cell import run_rest_cell
from .session import Session

log = logging.getLogger(__name__)


@dataclass
class _Claim:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class SessionManager:
    """Every session this replica serves and their leases; its kernels come from ``supply``."""

    def __init__(
        self,
        settings: ManagerSettings,
        env_prefix: str,
        store: StateStore,
        signer: Signer,
        url: Callable[[], str],
        runtime_dir: Path | None = None,
        observer: StateObserver | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.replica_id = uuid.uuid4().hex[:12]
        self._url = url
        self.kernel_specs = KernelSpecs()  # jupyter_client's lookup, without IPython in the service
        # Unix socket paths are limited to ~107 bytes, so kernels' sockets (and the checkpoints they hand
        # over) live in a short private directory, in memory when there is room.
        self._runtime_dir = runtime_dir or Path(tempfile.mkdtemp(prefix="skg-", dir=scratch_parent()))
        self.checkpointer = Checkpointer(
            store, signer, self._runtime_dir, settings.checkpoint_timeout, settings.session_ttl, observer
        )
        self.checkpointer.reply_handover = True  # every session takes its cells' checkpoints out of the replies
        self.kernels = KernelFactory(settings, self._runtime_dir, env_prefix, self.checkpointer)
        self.supply = KernelSupply(self.kernels, settings.kernel_name, settings.pool_size, lambda: self.draining)
        self.pool = self.supply.pool
        self._opener = Opener(
            settings, self.supply, self.checkpointer, lambda: self.draining, self._lease_lost, self.drop
        )
        self.sessions: dict[str, Session] = {}
        self.draining = False
        self._claims: dict[str, _Claim] = {}
        self._opening: dict[str, HeldLease] = {}  # leases of sessions being opened or restored here
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def url(self) -> str:
        return self._url()

    def prestart(self) -> None:
        """Boot the replica's first kernel now, before the rest of the replica (``KernelSupply.prestart``)."""
        self.supply.prestart()

    async def start(self) -> None:
        self.check_kernel_name(self.settings.kernel_name)
        self.supply.start()
        loop = asyncio.get_running_loop()
        keeper = LeaseKeeper(
            self.sessions,
            self._opening,
            self.store,
            self.replica_id,
            lambda: self.url,
            self.settings.lease_ttl,
            self._lease_lost,
            lambda s: self.drop(s, release=False, reason="lease lapsed: the state store is unreachable; reconnect"),
        )
        self._tasks.append(loop.create_task(supervise("lease keeper", keeper.run)))
        after = self.settings.evict_idle_after
        if after > 0:
            evictor = lambda: evict_idle(self.sessions, after, lambda s: self.drop(s, release=True))  # noqa: E731
            self._tasks.append(loop.create_task(supervise("idle eviction", evictor)))

    # -- kernelspecs -------------------------------------------------------------------------------------

    def check_kernel_name(self, name: str) -> str:
        try:
            self.kernel_specs.get_kernel_spec(name)
        except NoSuchKernel as exc:
            raise KernelSpecNotFound(name) from exc
        return name

    # -- creating and finding sessions ------------------------------------------------------------------

    async def create(
        self,
        session_id: str | None = None,
        kernel_name: str | None = None,
        env: Mapping[str, str] | None = None,
        tenant: str = "",
    ) -> Session:
        if self.draining:
            raise Draining()
        self._check_room()
        sid = validate_session_id(session_id) if session_id else str(uuid.uuid4())
        name = self.check_kernel_name(kernel_name or self.settings.kernel_name)
        created = time.time()
        allowed = self.kernels.allowed_env(env or {})
        record = SessionRecord(
            id=sid, kernel_name=name, created=created, last_activity=created, env=allowed, tenant=tenant
        )
        if not await stored(self.store.create(record)):
            raise SessionExists(sid)
        sent = now()
        fence = await stored(self.store.acquire(sid, self.replica_id, self.url, self.settings.lease_ttl))
        if fence is None:
            raise SessionExists(sid)
        try:
            lease = HeldLease(fence, self.settings.lease_ttl, sent)
            with self._opening_lease(sid, lease):
                session = await self._opener.open(record, lease, allowed)
            await self._register(session)
        except BaseException:
            with contextlib.suppress(StoreUnavailable):
                await self.store.delete(sid)
            raise
        log.info("session %s created on kernel %s (%s)", sid, session.kernel.id, name)
        return session

    def _check_room(self) -> None:
        limit = self.settings.max_sessions
        if limit > 0 and len(self.sessions) >= limit:
            raise ReplicaFull(limit)

    async def resolve(self, session_id: str, tenant: str | None = None) -> Session:
        """The live session, here: restored onto this replica if no live replica owns it.

        Raises OwnedElsewhere (with the owner's address) when another replica's lease is live and the
        request may be forwarded there. With ``tenant``, another tenant's session does not exist.
        """
        local = self.sessions.get(session_id)
        if local is not None:
            if tenant is not None and local.tenant != tenant:
                raise SessionNotFound(session_id)
            refused = local.refusal()
            if refused is not None:
                raise refused
            return local
        if self.draining:
            raise Draining()
        return await self._claim(session_id, steal=None, tenant=tenant)

    async def take_over(self, session_id: str, epoch: int, tenant: str | None = None) -> Session:
        """Take a session whose owner is provably gone (it refused a connection), if its epoch is unchanged."""
        if self.draining:  # it would be restored here only to be saved and released again: another replica takes it
            raise Draining()
        return await self._claim(session_id, steal=epoch, tenant=tenant)

    async def _claim(self, session_id: str, steal: int | None, tenant: str | None = None) -> Session:
        """The session, live here: restored unless another request on this replica already did.

        Without ``steal``, a live lease of another replica raises OwnedElsewhere instead.
        """
        known_id(session_id)
        # Requests for one session on this replica wait on one lock; the entry goes with its last user.
        claim = self._claims.setdefault(session_id, _Claim())
        claim.users += 1
        try:
            async with claim.lock:
                local = self.sessions.get(session_id)
                if local is not None and (tenant is None or local.tenant == tenant):
                    return local
                record = await find(self.store, session_id, tenant)
                lease = record.lease
                if steal is None and lease is not None and lease.held_by_other(self.replica_id, time.time()):
                    raise OwnedElsewhere(session_id, lease.owner, lease.url, lease.epoch)
                return await self._take_over(record, steal=steal)
        finally:
            claim.users -= 1
            if claim.users == 0:
                del self._claims[session_id]

    async def _take_over(self, record: SessionRecord, steal: int | None) -> Session:
        sid = record.id
        self._check_room()
        sent = now()
        fence: Fence | None = await stored(
            self.store.acquire(sid, self.replica_id, self.url, self.settings.lease_ttl, steal=steal)
        )
        if fence is None:
            fresh = await stored(self.store.get(sid))
            if fresh is None:
                raise SessionNotFound(sid)
            lease = fresh.lease
            if lease is None:
                raise StoreDown(f"session {sid!r}: could not take its lease")
            raise OwnedElsewhere(sid, lease.owner, lease.url, lease.epoch)
        held = HeldLease(fence, self.settings.lease_ttl, sent)
        with self._opening_lease(sid, held):
            session = await self._opener.restored(record, held)
        # Visible only once restored: nothing may run on the kernel before its state is back.
        await self._register(session)
        return session

    @contextlib.contextmanager
    def _opening_lease(self, session_id: str, lease: HeldLease) -> Iterator[None]:
        """The lease keeper renews a lease while its session is being opened (a cold kernel, a big restore)."""
        self._opening[session_id] = lease
        try:
            yield
        finally:
            self._opening.pop(session_id, None)

    async def _register(self, session: Session) -> None:
        """Serve the session here, if its lease survived the opening (else drop it: 503, retry)."""
        if session.lease is not None and not session.lease.valid():
            await self.drop(session, release=False)
            if session.lease.lost:
                raise LeaseLost(session.id, cell="not run")
            raise LeaseUncertain(session.id)
        self.sessions[session.id] = session

    def get(self, session_id: str) -> Session:
        """A session live on this replica (no store lookup)."""
        session = self.sessions.get(session_id)
        if session is None:
            raise SessionNotFound(session_id)
        return session

    async def record(self, session_id: str, tenant: str | None = None) -> SessionRecord:
        return await find(self.store, session_id, tenant)

    async def records(self, tenant: str = "", limit: int = LIST_LIMIT, after: str | None = None) -> list[SessionRecord]:
        return await stored(self.store.list_sessions(tenant, limit, after))

    # -- using sessions ----------------------------------------------------------------------------------

    async def execute(
        self, session: Session, code: str, timeout: float, on_output: OutputCallback | None = None
    ) -> ExecutionResult:
        if self.draining:
            raise Draining()
        refused = session.refusal()
        if refused is not None:
            raise refused
        try:
            return await run_rest_cell(
                session, code, timeout, self.settings.output_limit, self.settings.interrupt_grace, on_output
            )
        except LeaseLost:
            await self.drop(session, release=False)
            raise

    async def checkpoint_now(self, session: Session) -> dict[str, object]:
        """Force a checkpoint of a live session (after any running cell)."""
        if session.persistence is None:
            return {"status": "disabled"}
        async with session.lock:
            await session.cells.drained()
            outcome = await session.persistence.after_cell(session.kernel)
        return outcome.to_json()

    async def delete(self, session_id: str, tenant: str | None = None) -> None:
        known_id(session_id)
        if tenant is not None:
            live = self.sessions.get(session_id)
            owner = live.tenant if live is not None else (await self.record(session_id)).tenant
            if owner != tenant:
                raise SessionNotFound(session_id)
        session = self.sessions.pop(session_id, None)
        record = await stored(self.store.get(session_id)) if session is None else None
        if session is None and record is None:
            raise SessionNotFound(session_id)
        # The state goes first, and the kernel is killed, not asked to exit: its state is being thrown away, and
        # ipykernel sometimes takes jupyter_client's whole shutdown wait (2.5-5 s) to answer a shutdown request,
        # which a replica forwarding this DELETE would take for a lapsed lease (the lease is no longer renewed
        # once the session left ``self.sessions``).
        await stored(self.store.delete(session_id))
        if session is not None:
            await session.close(graceful=False)
        log.info("session %s deleted", session_id)

    async def drop(self, session: Session, release: bool, dead: bool = False, reason: str = "session moved") -> None:
        """Stop serving a session here (its state stays in the store)."""
        if self.sessions.get(session.id) is session:
            del self.sessions[session.id]
        lease = session.lease
        lost = lease is None or lease.lost or (session.persistence is not None and session.persistence.lost)
        if release and not lost and lease is not None:
            with contextlib.suppress(StoreUnavailable):
                await self.store.release(session.id, self.replica_id, lease.fence)
        await session.close(dead=dead, reason=reason)

    async def _lease_lost(self, session: Session) -> None:
        await self.drop(session, release=False, reason="session moved to another replica; reconnect")

    # -- the end ------------------------------------------------------------------------------------------

    async def wait_idle(self, grace: float) -> None:
        """The drain (SIGTERM): the warm pool stops filling, since no new session will take its kernels, while
        running cells (and their checkpoints) get up to ``grace`` seconds to finish."""
        await self.supply.stop_filling()
        await wait_idle(self.sessions.values(), grace)

    async def close(self) -> None:
        """Stop: commit what is pending, release every lease, shut every kernel down. State stays stored."""
        self.draining = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        sessions = list(self.sessions.values())
        await save_all(sessions)
        await asyncio.gather(*(self.drop(s, release=True) for s in sessions), return_exceptions=True)
        await self.supply.close()
        shutil.rmtree(self._runtime_dir, ignore_errors=True)
