"""The service's half of checkpointing: ask the kernel for what changed, sign it, commit it; and the reverse.

The kernel (``notebook_state.capture``, loaded into it) writes its manifest and the blobs of changed groups
into a private directory; the service reads them, signs them (the kernel never holds the key) and commits
them to the store, fenced by the session's lease epoch. A restore verifies every signature before a single
byte reaches the kernel.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import orjson

from .errors import CheckpointError
from .handover import (
    MAX_BYTES,
    HandOverRejected,
    off_loop,
    read_capture_async,
    read_json,
    read_reply,
    take_auto_async,
)
from .signing import Signer, VerificationError
from .store import Commit, Fence, SessionRecord, StateStore, StoreUnavailable
from .types import JSONDict, KernelLink, StateObserver

log = logging.getLogger(__name__)

ENVELOPE_FORMAT = 1

MayCommit = Callable[[], bool]
"""Whether a commit may be sent now (its lease is still certainly held)."""

OFF_LOOP_BYTES = 256 * 1024
"""Signing or verifying more than this many bytes runs in a thread: the event loop serves every session."""


class CheckpointStatus(enum.StrEnum):
    COMMITTED = "committed"
    PENDING = "pending"  # captured, but the store is unreachable: retried until it commits
    FAILED = "failed"  # the kernel could not produce a checkpoint
    DISABLED = "disabled"


@dataclass(slots=True)
class CheckpointOutcome:
    status: CheckpointStatus
    execution_count: int | None = None
    written_bytes: int = 0
    total_bytes: int = 0
    seconds: float = 0.0
    variables: list[str] = field(default_factory=list)
    lost: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    warnings: list[str] = field(default_factory=list)  # what the kernel could not capture as asked (aliasing)

    def to_json(self) -> JSONDict:
        return {
            "status": self.status.value,
            "written_bytes": self.written_bytes,
            "total_bytes": self.total_bytes,
            "seconds": round(self.seconds, 6),
            "lost": self.lost,
            **({"error": self.error} if self.error else {}),
            **({"warnings": self.warnings} if self.warnings else {}),
        }


@dataclass(slots=True)
class RestoreReport:
    execution_count: int
    restored: list[str]
    replayed: list[str]
    modules: list[str]
    lost: dict[str, str]
    seconds: float
    # Process state (random generators, sys.path, IPython, libraries): {"restored": [hook], "lost": {hook: why}}
    process: JSONDict = field(default_factory=dict)

    def to_json(self) -> JSONDict:
        return {
            "execution_count": self.execution_count,
            "restored": self.restored,
            "replayed": self.replayed,
            "modules": self.modules,
            "lost": self.lost,
            "process": self.process,
            "seconds": round(self.seconds, 6),
        }


@dataclass
class SessionCheckpoints:
    """What this replica knows of one session's stored checkpoint, to write only what changed."""

    committed_keys: set[str] = field(default_factory=set)
    macs: dict[str, str] = field(default_factory=dict)
    unsent: dict[str, bytes] = field(default_factory=dict)
    pending: tuple[bytes, str, list[str], SessionRecord] | None = None
    last: CheckpointOutcome | None = None
    committed_count: int = 0  # the execution count of the last checkpoint that committed
    uncertain: bool = False  # a commit was sent and its answer lost: it may have landed
    # What the last cell's execute_reply carried (its checkpoint, when small): set at every reply, so that it is
    # never taken for a later cell's.
    offered: object | None = None

    def offer(self, found: object | None) -> None:
        self.offered = found


async def run_in_kernel(kernel: KernelLink, code: str, timeout: float) -> None:
    """Run service code in the kernel; CheckpointError when it raised there."""
    reply = await kernel.execute_silent(code, timeout)
    if reply.get("status") != "ok":
        raise CheckpointError(f"{reply.get('ename', 'Error')}: {reply.get('evalue', '')}")


class Checkpointer:
    def __init__(
        self,
        store: StateStore,
        signer: Signer,
        runtime_dir: Path,
        timeout: float,
        ttl: float,
        observer: StateObserver | None = None,
    ) -> None:
        self.observer = observer
        self.store = store
        self.signer = signer
        self.runtime_dir = runtime_dir
        self.timeout = timeout
        self.ttl = ttl

    max_handover_bytes = MAX_BYTES
    """The largest checkpoint a kernel may hand over: it is read into the service's memory."""
    reply_handover = False
    """Kernels hand small checkpoints over in their execute_replies: whoever reads the replies takes them out
    (``notebook_state.types.REPLY_KEY``) and gives them to ``SessionCheckpoints.offer``."""

    def kernel_dir(self, kernel: KernelLink) -> Path:
        """The kernel's own directory: a sandboxed kernel sees this one and no other kernel's."""
        return self.runtime_dir / kernel.id

    def auto_dir(self, kernel: KernelLink) -> Path:
        return self.kernel_dir(kernel) / "auto"

    async def install(self, kernel: KernelLink, timeout: float) -> None:
        """Load the capture module into a new kernel, writing each cell's checkpoint into its auto dir."""
        code = (
            f"__import__('notebook_state.capture').capture.install(auto_dir={str(self.auto_dir(kernel))!r}, "
            f"reply={self.reply_handover!r})"
        )
        await run_in_kernel(kernel, code, timeout)

    def forget(self, kernel: KernelLink) -> None:
        shutil.rmtree(self.auto_dir(kernel), ignore_errors=True)

    def _workdir(self, kernel: KernelLink, kind: str) -> Path:
        parent = self.kernel_dir(kernel)
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = parent / f"{kind}-{uuid.uuid4().hex[:12]}"
        path.mkdir(mode=0o700)
        owner = parent.stat()
        if owner.st_uid != os.geteuid():  # the kernel runs as a uid of its own: the directory is its to use
            os.chown(path, owner.st_uid, owner.st_gid)
        return path

    # -- capture -----------------------------------------------------------------------------------------

    async def capture(
        self,
        session_id: str,
        kernel: KernelLink,
        fence: Fence,
        state: SessionCheckpoints,
        record: SessionRecord,
        may_commit: MayCommit | None = None,
    ) -> CheckpointOutcome:
        started = time.perf_counter()
        for full in (False, True):
            try:
                taken = None if full else self._take_offered(state) or await self._take_auto(kernel)
                manifest, blobs = taken or await self._capture(kernel, full)
            except (CheckpointError, TimeoutError, OSError, ValueError) as exc:
                outcome = CheckpointOutcome(CheckpointStatus.FAILED, error=f"checkpoint failed: {exc}")
                state.last = outcome
                return outcome
            groups: dict[str, JSONDict] = manifest.get("groups", {})
            keys = {gid: f"{gid}:{g['hash']}" for gid, g in groups.items()}
            new = {keys[gid]: data for gid, data in blobs.items()}
            written = sum(len(b) for b in new.values())
            if written > OFF_LOOP_BYTES:  # signing that much on the event loop would hold up every session
                macs = await asyncio.to_thread(self._sign_all, session_id, new)
            else:
                macs = self._sign_all(session_id, new)
            state.unsent.update(new)
            state.macs.update(macs)
            referenced = set(keys.values())
            # The kernel may believe a group unchanged that this replica never stored (its blob was lost on
            # restore, say): then capture again, writing every group.
            if state.macs.keys() >= referenced:
                break
        if len(state.unsent) > len(new):
            for key in [k for k in state.unsent if k not in referenced]:
                # Superseded before it was sent (the store was unreachable): only the latest checkpoint is kept.
                del state.unsent[key]
        macs = state.macs
        envelope = _dumps({"format": ENVELOPE_FORMAT, "manifest": manifest, "macs": {k: macs[k] for k in referenced}})
        sig = self.signer.sign(session_id, envelope)
        count = manifest.get("execution_count")
        if isinstance(count, int):
            record.execution_count = count
        record.last_activity = record.checkpoint_at = time.time()
        record.checkpoint_bytes = sum(int(g.get("size", 0)) for g in groups.values())
        names = sorted(n for g in groups.values() for n in g.get("names", ()))
        modules = manifest.get("modules")
        record.variables = names + sorted(modules) if modules else names
        state.pending = (envelope, sig, sorted(referenced), record)
        errors = manifest.get("errors")
        outcome = CheckpointOutcome(
            CheckpointStatus.PENDING,
            execution_count=record.execution_count,
            written_bytes=written,
            total_bytes=record.checkpoint_bytes,
            variables=record.variables,
            lost=dict(manifest.get("lost", {})),
            warnings=[str(e).splitlines()[0] for e in errors if str(e).strip()] if errors else [],
        )
        await self.flush(session_id, fence, state, may_commit)
        outcome.status = CheckpointStatus.COMMITTED if state.pending is None else CheckpointStatus.PENDING
        outcome.seconds = time.perf_counter() - started
        state.last = outcome
        if self.observer is not None:
            committed = outcome.status is CheckpointStatus.COMMITTED
            self.observer.checkpointed(outcome.written_bytes, outcome.seconds, committed)
        return outcome

    def _sign_all(self, session_id: str, blobs: dict[str, bytes]) -> dict[str, str]:
        sign = self.signer.sign
        return {key: sign(session_id, data) for key, data in blobs.items()}

    async def flush(
        self, session_id: str, fence: Fence, state: SessionCheckpoints, may_commit: MayCommit | None = None
    ) -> bool:
        """Commit the latest captured checkpoint if one is waiting; True once nothing is pending.

        ``may_commit`` says whether the owner still certainly holds its lease: past that, nothing is sent (the
        session is about to be dropped here, and what it ran after its lease lapsed must never land).
        Raises StaleEpoch when another replica owns the session now.
        """
        if state.pending is None:
            return True
        if may_commit is not None and not may_commit():
            return False
        envelope, sig, referenced, record = state.pending
        unsent = state.unsent
        ref = set(referenced)
        commit = Commit(
            manifest=envelope,
            manifest_sig=sig,
            blobs={k: v for k, v in unsent.items() if k in ref} if unsent else {},
            keep=[k for k in referenced if k not in unsent],
            drop=sorted(state.committed_keys - ref),
            record=record,
        )
        try:
            await self.store.commit(session_id, fence, commit, self.ttl)
        except StoreUnavailable as exc:
            log.warning("session %s: checkpoint pending, store unreachable: %s", session_id, exc)
            state.uncertain = True
            return False
        state.uncertain = False
        state.committed_keys = ref
        state.unsent.clear()
        state.macs = {k: v for k, v in state.macs.items() if k in ref}
        state.pending = None
        state.committed_count = record.execution_count
        if state.last is not None and state.last.status is CheckpointStatus.PENDING:
            state.last.status = CheckpointStatus.COMMITTED
        return True

    def _take_offered(self, state: SessionCheckpoints) -> tuple[JSONDict, dict[str, bytes]] | None:
        found, state.offered = state.offered, None
        if found is None:
            return None
        try:
            return read_reply(found, self.max_handover_bytes)
        except HandOverRejected as exc:  # as for a bad hand-over directory: a full checkpoint is asked for
            log.warning("a kernel's reply carried a checkpoint that is not accepted: %s", exc)
            return None

    async def _take_auto(self, kernel: KernelLink) -> tuple[JSONDict, dict[str, bytes]] | None:
        return await take_auto_async(self.auto_dir(kernel), self.max_handover_bytes, self.timeout)

    async def _capture(self, kernel: KernelLink, full: bool) -> tuple[JSONDict, dict[str, bytes]]:
        out = self._workdir(kernel, "ckpt")
        try:
            code = f"__import__('notebook_state.capture').capture.checkpoint({str(out)!r}, full={full})"
            await run_in_kernel(kernel, code, self.timeout)
            return await read_capture_async(out, self.max_handover_bytes, self.timeout)
        finally:
            shutil.rmtree(out, ignore_errors=True)

    # -- restore -----------------------------------------------------------------------------------------

    async def restore(self, session_id: str, kernel: KernelLink, state: SessionCheckpoints) -> RestoreReport | None:
        """Load the session's last committed checkpoint into ``kernel``; None if it never committed one."""
        started = time.perf_counter()
        found = await self.store.load_manifest(session_id)
        if found is None:
            return None
        envelope_bytes, sig = found
        self.signer.verify(session_id, envelope_bytes, sig, "checkpoint manifest")
        envelope = json.loads(envelope_bytes)
        manifest: JSONDict = envelope["manifest"]
        macs: dict[str, str] = envelope["macs"]
        groups: dict[str, JSONDict] = manifest.get("groups", {})
        keys = {gid: f"{gid}:{g['hash']}" for gid, g in groups.items()}
        blobs = await self.store.load_blobs(session_id, list(keys.values()))
        lost: dict[str, str] = {}
        good: dict[str, list[bytes]] = {}

        def verify_all() -> None:
            for gid, key in keys.items():
                data = blobs.get(key)
                try:
                    if data is None:
                        raise VerificationError("its stored data is missing")
                    self.signer.verify(session_id, data, macs.get(key, ""), f"variable group {gid}")
                    good[gid] = data
                except VerificationError as exc:
                    for name in groups[gid].get("names", []):
                        lost[name] = f"not restored: {exc}"

        if sum(len(c) for chunks in blobs.values() for c in chunks) > OFF_LOOP_BYTES:
            await asyncio.to_thread(verify_all)
        else:
            verify_all()
        manifest = {**manifest, "groups": {gid: groups[gid] for gid in good}}
        in_dir = self._workdir(kernel, "restore")
        try:
            await asyncio.to_thread(_write_restore, in_dir, manifest, good)
            await run_in_kernel(kernel, f"__import__('notebook_state.capture').capture.restore({str(in_dir)!r})",
                                self.timeout)  # fmt: skip
            report = await off_loop(lambda: read_json(in_dir, "report.json"), self.timeout)
        finally:
            shutil.rmtree(in_dir, ignore_errors=True)
        state.committed_keys = {keys[gid] for gid in good}
        state.macs = {keys[gid]: macs[keys[gid]] for gid in good}
        state.unsent.clear()
        state.pending = None
        state.committed_count = int(manifest.get("execution_count", 0) or 0)
        lost.update(report.get("lost", {}))
        lost.update(manifest.get("lost", {}))
        if self.observer is not None:
            self.observer.restored(time.perf_counter() - started)
        return RestoreReport(
            execution_count=int(report.get("execution_count", manifest.get("execution_count", 0)) or 0),
            restored=list(report.get("restored", [])),
            replayed=list(report.get("replayed", [])),
            modules=list(report.get("modules", [])),
            lost=lost,
            seconds=time.perf_counter() - started,
            process=dict(report.get("process") or {}),
        )


def _dumps(document: JSONDict) -> bytes:
    try:
        return orjson.dumps(document)
    except orjson.JSONEncodeError:  # what orjson refuses (integers past 64 bits) the standard library writes
        return json.dumps(document, separators=(",", ":")).encode()


def _write_restore(in_dir: Path, manifest: JSONDict, blobs: dict[str, list[bytes]]) -> None:
    # The directory is inside the kernel's own: create each file afresh, never through a link put there.
    for gid, chunks in blobs.items():
        with _create(in_dir / f"{gid}.bin") as f:
            f.writelines(chunks)
    with _create(in_dir / "manifest.json") as f:
        f.write(json.dumps(manifest).encode())


def _create(path: Path) -> BinaryIO:
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644), "wb")
