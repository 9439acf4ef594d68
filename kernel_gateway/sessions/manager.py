"""The sessions of one replica: created on warm kernels, leased in the store, restored anywhere.

A session lives in the store (record, lease, checkpoints); this replica holds a live kernel only for the
sessions whose lease it holds. Asking for any other session either names its live owner (the HTTP layer
forwards there) or takes it over: a new lease with a higher epoch, a kernel from the pool, a restore.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from jupyter_client.kernelspec import NoSuchKernel

from notebook_state.checkpoint import Checkpointer
from notebook_state.persistence import Persistence
from notebook_state.signing import Signer, VerificationError
from notebook_state.store import LIST_LIMIT, Fence, SessionRecord, StateStore, StoreUnavailable
from notebook_state.types import SESSION_ID_PATTERN, StateObserver

from ..kernels.factory import KernelFactory
from ..kernels.kernel import Kernel, KernelState
from ..kernels.launch import KernelSpecs
from ..kernels.options import scratch_parent
from ..kernels.pool import REFILL_DELAY, KernelPool
from ..types import ManagerSettings
from .errors import (
    CheckpointRejected,
    Draining,
    InvalidSessionId,
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
from .rest_cell import run_rest_cell
from .session import STATE_LOST_NOTICE, Session

log = logging.getLogger(__name__)
T = TypeVar("T")

# A replica's first kernel waits for the session it was started for (a cold start's restore) until the warm
# pool has a kernel ready, or at most this long (no pool), then goes.
FIRST_KERNEL_HOLD = 10.0


@dataclass
class _Claim:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


def unsaved_cells_notice(record: SessionRecord) -> str | None:
    """Cells an earlier owner ran but never committed (it died or lost the store first), named for the next
    caller; None when every cell that ran was saved."""
    first, last = record.execution_count + 1, record.ran
    if last < first:
        return None
    cells = f"cell {first}" if first == last else f"cells {first}-{last}"
    return (
        f"{cells} ran on a replica that stopped before {'its checkpoint' if first == last else 'their checkpoints'} "
        f"committed: {'it was' if first == last else 'they were'} not saved; the session resumes from execution "
        f"count {record.execution_count}"
    )


def known_id(session_id: str) -> None:
    """Ids that no session can have (they were validated at creation) are simply not found: they never reach
    the store, where a glob character could match other sessions' keys."""
    if not SESSION_ID_PATTERN.match(session_id):
        raise SessionNotFound(session_id)


def validate_session_id(session_id: str) -> str:
    if not SESSION_ID_PATTERN.match(session_id):
        raise InvalidSessionId(
            f"invalid session id {session_id!r}: use 1-128 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return session_id


class SessionManager:
    """Every session this replica serves, the warm pool their kernels come from, and their leases."""

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
        self.pool = KernelPool(self._pool_kernel, settings.kernel_name, settings.pool_size)
        self._pool_grew = asyncio.Event()
        self.sessions: dict[str, Session] = {}
        self.draining = False
        self._claims: dict[str, _Claim] = {}
        self._opening: dict[str, HeldLease] = {}  # leases of sessions being opened or restored here
        self._tasks: list[asyncio.Task[None]] = []
        self._first: asyncio.Task[Kernel] | None = None  # the first kernel, until a session takes it
        self._prestarted = False
        self._first_done = False
        self._started = False

    @property
    def url(self) -> str:
        return self._url()

    def prestart(self) -> None:
        """Boot the first kernel now, before the rest of the replica has started: a restore that finds the pool
        empty (a cold start) takes it. It is exec'd without the preloaded modules: the restore's first result
        waits neither for them nor for the kernel zygote's boot. The warm pool (and the zygote) start once it is
        up and the replica has started, so that on a small machine they do not boot alongside it or alongside
        the service's imports."""
        if self._prestarted:
            return
        self._prestarted = True
        loop = asyncio.get_running_loop()
        first = loop.create_task(self.kernels.start(self.settings.kernel_name, None, preload=False, fork=False))
        self._first = first
        first.add_done_callback(lambda _: self._first_up())
        self._tasks.append(loop.create_task(self._expire_first(first)))

    def _first_up(self) -> None:
        self._first_done = True
        self._fill_pool()

    def _fill_pool(self) -> None:
        """Start the pool once the first kernel is up and start() has run (whichever comes last)."""
        if self.draining or not self._started or (self._prestarted and not self._first_done):
            return
        # Launching a kernel blocks the loop for a moment: when a restore already took the first kernel, its
        # first result goes before the pool's first launch (as the pool itself waits after a kernel is taken).
        delay = REFILL_DELAY if self._prestarted and self._first is None else 0.0
        asyncio.get_running_loop().call_later(delay, lambda: None if self.draining else self.pool.start())

    async def _pool_kernel(self, name: str, env: Mapping[str, str] | None) -> Kernel:
        kernel = await self.kernels.start(name, env)
        self._pool_grew.set()
        return kernel

    async def _expire_first(self, first: asyncio.Task[Kernel]) -> None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait({first})
            deadline = loop.time() + FIRST_KERNEL_HOLD
            while self._first is first and self.pool.ready_count == 0 and loop.time() < deadline:
                self._pool_grew.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._pool_grew.wait(), deadline - loop.time())
        finally:
            if self._first is first:  # no session took it
                self._first = None
                if first.done() and not first.cancelled() and first.exception() is None:
                    await first.result().shutdown(now=True)
                else:
                    first.cancel()

    async def _first_kernel(self, name: str) -> Kernel | None:
        """The replica's first kernel, for the one session that asks first; None when taken or failed."""
        first = self._first
        if first is None or name != self.settings.kernel_name:
            return None
        self._first = None
        try:
            kernel = await first
        except Exception as exc:
            log.warning("first kernel failed to start (%s): taking one from the pool", exc)
            return None
        if kernel.state is not KernelState.READY:
            await kernel.shutdown(now=True)
            return None
        return kernel

    async def start(self) -> None:
        self.check_kernel_name(self.settings.kernel_name)
        self._started = True
        self._fill_pool()
        loop = asyncio.get_running_loop()
        keeper = LeaseKeeper(
            self.sessions,
            self._opening,
            self.store,
            self.replica_id,
            lambda: self.url,
            self.settings.lease_ttl,
            self._lease_lost,
            self._lease_lapsed,
        )
        self._tasks.append(loop.create_task(supervise("lease keeper", keeper.run)))
        after = self.settings.evict_idle_after
        if after > 0:
            evictor = lambda: evict_idle(self.sessions, after, self.evict)  # noqa: E731
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
        if not await self._store(self.store.create(record)):
            raise SessionExists(sid)
        sent = now()
        fence = await self._store(self.store.acquire(sid, self.replica_id, self.url, self.settings.lease_ttl))
        if fence is None:
            raise SessionExists(sid)
        try:
            lease = HeldLease(fence, self.settings.lease_ttl, sent)
            with self._opening_lease(sid, lease):
                session = await self._open(record, lease, allowed)
            await self._register(session)
        except BaseException:
            with contextlib.suppress(StoreUnavailable):
                await self.store.delete(sid)
            raise
        log.info("session %s created on kernel %s (%s)", sid, session.kernel.id, name)
        return session

    async def _open(
        self, record: SessionRecord, lease: HeldLease, env: Mapping[str, str], restore: bool = False
    ) -> Session:
        name = record.kernel_name

        async def acquire() -> Kernel:
            kernel = await self._kernel(name, env, restore)
            await self.kernels.apply_env(kernel, env, record.tenant)
            return kernel

        kernel = await acquire()
        if self.draining:
            await kernel.shutdown(now=True)
            raise Draining()
        persistence = (
            Persistence(self.checkpointer, record, lease.fence, may_commit=lease.valid)
            if self.settings.checkpoint and name == self.settings.kernel_name
            else None
        )
        session = Session(record.id, kernel, acquire, persistence, self.settings.ws_replay_bytes, lease=lease)
        session.created = record.created
        session.tenant = record.tenant
        session.on_lease_lost = self._lease_lost
        return session

    async def _kernel(self, name: str, env: Mapping[str, str], restore: bool) -> Kernel:
        """A kernel from the pool; for a restore that finds it empty (a cold start), the replica's first kernel,
        booting since the start."""
        if restore and self.pool.ready_count == 0:
            first = await self._first_kernel(name)
            if first is not None:
                return first
        return await self.pool.acquire(name, env)

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
                record = await self._store(self.store.get(session_id))
                if record is None or (tenant is not None and record.tenant != tenant):
                    raise SessionNotFound(session_id)  # another tenant's session: not restored, not forwarded
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
        fence: Fence | None = await self._store(
            self.store.acquire(sid, self.replica_id, self.url, self.settings.lease_ttl, steal=steal)
        )
        if fence is None:
            fresh = await self._store(self.store.get(sid))
            if fresh is None:
                raise SessionNotFound(sid)
            lease = fresh.lease
            if lease is None:
                raise StoreDown(f"session {sid!r}: could not take its lease")
            raise OwnedElsewhere(sid, lease.owner, lease.url, lease.epoch)
        held = HeldLease(fence, self.settings.lease_ttl, sent)
        with self._opening_lease(sid, held):
            session = await self._restored(record, held)
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
                raise LeaseLost(session.id)
            raise LeaseUncertain(session.id)
        self.sessions[session.id] = session

    async def _restored(self, record: SessionRecord, lease: HeldLease) -> Session:
        sid = record.id
        session = await self._open(record, lease, record.env, restore=True)
        unsaved = unsaved_cells_notice(record)
        if unsaved is not None:
            log.warning("session %s: %s", sid, unsaved)
            session.add_notice(unsaved)
        if session.persistence is None and max(record.ran, record.execution_count) > 0:
            session.add_notice(STATE_LOST_NOTICE)
        if session.persistence is not None:
            try:
                report = await self.checkpointer.restore(sid, session.kernel, session.persistence.state)
            except VerificationError as exc:
                await self.drop(session, release=True)
                raise CheckpointRejected(f"{exc}; refusing to load it") from exc
            except StoreUnavailable as exc:
                await self.drop(session, release=False)
                raise StoreDown(f"state store unreachable: {exc}") from exc
            except Exception:
                await self.drop(session, release=True)
                raise
            if report is not None:
                session.set_restored(report)
                log.info(
                    "session %s restored at execution count %d (%d restored, %d lost) in %.3f s",
                    sid, report.execution_count, len(report.restored), len(report.lost), report.seconds,
                )  # fmt: skip
        return session

    @staticmethod
    async def _store(op: Awaitable[T]) -> T:
        try:
            return await op
        except StoreUnavailable as exc:
            raise StoreDown(f"the state store is unreachable: {exc}") from exc

    def get(self, session_id: str) -> Session:
        """A session live on this replica (no store lookup)."""
        session = self.sessions.get(session_id)
        if session is None:
            raise SessionNotFound(session_id)
        return session

    async def record(self, session_id: str, tenant: str | None = None) -> SessionRecord:
        known_id(session_id)
        record = await self._store(self.store.get(session_id))
        if record is None or (tenant is not None and record.tenant != tenant):
            raise SessionNotFound(session_id)
        return record

    async def records(self, tenant: str = "", limit: int = LIST_LIMIT, after: str | None = None) -> list[SessionRecord]:
        return await self._store(self.store.list_sessions(tenant, limit, after))

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
        record = await self._store(self.store.get(session_id)) if session is None else None
        if session is None and record is None:
            raise SessionNotFound(session_id)
        # The state goes first, and the kernel is killed, not asked to exit: its state is being thrown away, and
        # ipykernel sometimes takes jupyter_client's whole shutdown wait (2.5-5 s) to answer a shutdown request,
        # which a replica forwarding this DELETE would take for a lapsed lease (the lease is no longer renewed
        # once the session left ``self.sessions``).
        await self._store(self.store.delete(session_id))
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

    async def _lease_lapsed(self, session: Session) -> None:
        """The lease may have lapsed unrenewed: another replica may take the session any moment, so this one
        stops at once; its kernel (and whatever ran uncommitted) goes, the committed state stays stored."""
        unsaved = session.execution_count - (session.persistence.state.committed_count if session.persistence else 0)
        log.warning(
            "session %s: lease may have lapsed (the store did not confirm it in time); dropped here%s",
            session.id, f", {unsaved} cells not saved" if session.persistence is not None and unsaved > 0 else "",
        )  # fmt: skip
        await self.drop(session, release=False, reason="lease lapsed: the state store is unreachable; reconnect")

    async def evict(self, session: Session) -> bool:
        """Free an idle session's kernel; its committed checkpoint is restored on next use."""
        if session.persistence is None or session.busy or session.connections:
            return False
        if not await session.persistence.flush():
            return False
        await self.drop(session, release=True)
        log.info("session %s evicted to the store", session.id)
        return True

    # -- housekeeping ------------------------------------------------------------------------------------

    async def wait_idle(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for running cells (and their checkpoints) to finish (SIGTERM drain)."""

        async def drained() -> None:
            await asyncio.gather(*(s.wait_idle() for s in list(self.sessions.values())))

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(drained(), grace)

    async def _save(self, session: Session) -> bool:
        """Commit what is pending of one session; False (and why, logged) if it could not be."""
        if session.persistence is None:
            return True
        try:
            if await session.persistence.flush():
                return True
            reason = "its lease was lost" if session.persistence.lost else "the store is unreachable"
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
        log.error("shutdown: session %s could not be saved: %s", session.id, reason)
        return False

    async def close(self) -> None:
        """Stop: commit what is pending, release every lease, shut every kernel down. State stays stored."""
        self.draining = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        sessions = list(self.sessions.values())
        saved = await asyncio.gather(*(self._save(s) for s in sessions))
        unsaved = [s.id for s, ok in zip(sessions, saved, strict=True) if not ok]
        if unsaved:
            log.error(
                "shutdown: %d sessions could not be saved; their last cells are lost: %s",
                len(unsaved), ", ".join(sorted(unsaved)),
            )  # fmt: skip
        await asyncio.gather(*(self.drop(s, release=True) for s in sessions), return_exceptions=True)
        await self.pool.close()
        self.kernels.close()
        shutil.rmtree(self._runtime_dir, ignore_errors=True)
