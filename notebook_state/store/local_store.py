"""The embedded store: SQLite in the data directory, for one process on a laptop with nothing else installed.

It keeps the same contract as the Redis store (records, leases with epochs, fenced commits), so the session
layer has one code path. A lock file makes it single-process: a lease held by another owner is a leftover of
an earlier run of this same data directory, so it may always be taken.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import orjson

from .base import LIST_LIMIT, Commit, Fence, Lease, Renewal, SessionRecord, StaleEpoch, StoreUnavailable

T = TypeVar("T")

_CHECKPOINT_EVERY = 500
"""Transactions between WAL checkpoints (SQLite's own default is every 1000 pages)."""
_SMALL = 256 * 1024
"""Bytes of a commit small enough to write on the event loop."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
  id TEXT PRIMARY KEY,
  fields TEXT NOT NULL,
  epoch INTEGER NOT NULL DEFAULT 0,
  lease_owner TEXT,
  lease_url TEXT,
  lease_expires REAL,
  manifest BLOB,
  manifest_sig TEXT,
  expires REAL NOT NULL,
  nonce TEXT,
  ran INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS blobs (
  session_id TEXT NOT NULL,
  key TEXT NOT NULL,
  data BLOB NOT NULL,
  PRIMARY KEY (session_id, key)
);
"""


class LocalStore:
    def __init__(self, directory: Path, session_ttl: float) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lockfile = open(directory / "store.lock", "w")  # noqa: SIM115 - held for the store's lifetime
        try:
            fcntl.flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self._lockfile.close()
            raise StoreUnavailable(
                f"the local store in {directory} is in use by another process; use Redis for several replicas"
            ) from exc
        path = directory / "sessions.sqlite3"
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        os.chmod(path, 0o600)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        # A WAL checkpoint is the one step that syncs to disk: taken in a thread (``_checkpoint_wal``), never
        # by a small transaction that runs on the event loop.
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._since_checkpoint = 0
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(sessions)")}
        for name, decl in (("nonce", "TEXT"), ("ran", "INTEGER NOT NULL DEFAULT 0")):
            if name not in columns:  # a data directory of an earlier version
                self._db.execute(f"ALTER TABLE sessions ADD COLUMN {name} {decl}")
        self._lock = threading.Lock()
        self._ttl = session_ttl
        # One cursor for every transaction (they run one at a time, under the lock): the connection's own
        # ``execute`` makes a cursor per statement, five a cell, and keeps a weak reference to each.
        self._cur = self._db.cursor()

    def _transaction(self, fn: Callable[[sqlite3.Cursor], T]) -> T:
        cur = self._cur
        cur.execute("BEGIN IMMEDIATE")
        try:
            result = fn(cur)
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")
        self._since_checkpoint += 1
        return result

    async def _run(self, fn: Callable[[sqlite3.Cursor], T], small: bool = True) -> T:
        """Run ``fn`` in a transaction. A small one runs right here on the event loop when nothing else holds
        the database: with WAL and no sync until a checkpoint it takes tens of microseconds, less than the hop
        to a thread. Big ones (blobs, restores), and any that would wait for the lock, go to a thread."""
        if small and self._lock.acquire(blocking=False):
            try:
                result = self._transaction(fn)
            finally:
                self._lock.release()
        else:

            def locked() -> T:
                with self._lock:
                    return self._transaction(fn)

            result = await asyncio.to_thread(locked)
        if self._since_checkpoint >= _CHECKPOINT_EVERY:
            self._since_checkpoint = 0
            await asyncio.to_thread(self._checkpoint_wal)
        return result

    def _checkpoint_wal(self) -> None:
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    async def ping(self) -> None:
        await self._run(lambda db: db.execute("SELECT 1").fetchone())

    def _purge_expired(self, db: sqlite3.Cursor) -> None:
        expired = [r[0] for r in db.execute("SELECT id FROM sessions WHERE expires < ?", (time.time(),))]
        for session_id in expired:
            db.execute("DELETE FROM blobs WHERE session_id = ?", (session_id,))
            db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

    async def create(self, record: SessionRecord) -> bool:
        def run(db: sqlite3.Cursor) -> bool:
            self._purge_expired(db)
            cur = db.execute(
                "INSERT OR IGNORE INTO sessions (id, fields, expires) VALUES (?, ?, ?)",
                (record.id, json.dumps(record.to_fields()), time.time() + self._ttl),
            )
            return cur.rowcount == 1

        return await self._run(run, small=False)  # it purges expired sessions, blobs and all

    _COLUMNS = "id, fields, epoch, lease_owner, lease_url, lease_expires, ran"

    @staticmethod
    def _record(row: tuple[str, str, int, str | None, str | None, float | None, int]) -> SessionRecord:
        session_id, fields, epoch, owner, url, expires, ran = row
        lease = Lease(owner, url or "", epoch, expires or 0.0) if owner else None
        return SessionRecord.from_fields(session_id, {**json.loads(fields), "ran": str(ran)}, lease)

    async def get(self, session_id: str) -> SessionRecord | None:
        def run(db: sqlite3.Cursor) -> SessionRecord | None:
            row = db.execute(
                f"SELECT {self._COLUMNS} FROM sessions WHERE id = ? AND expires >= ?", (session_id, time.time())
            ).fetchone()
            return self._record(row) if row else None

        return await self._run(run)

    async def list_sessions(
        self, tenant: str = "", limit: int = LIST_LIMIT, after: str | None = None
    ) -> list[SessionRecord]:
        def run(db: sqlite3.Cursor) -> list[SessionRecord]:
            self._purge_expired(db)
            start = db.execute("SELECT rowid FROM sessions WHERE id = ?", (after,)).fetchone() if after else None
            rows = db.execute(
                f"SELECT {self._COLUMNS} FROM sessions WHERE rowid > ? "
                "AND coalesce(json_extract(fields, '$.tenant'), '') = ? ORDER BY rowid LIMIT ?",
                (start[0] if start else 0, tenant, limit),
            ).fetchall()
            return [self._record(r) for r in rows]

        return await self._run(run)

    async def delete(self, session_id: str) -> None:
        def run(db: sqlite3.Cursor) -> None:
            db.execute("DELETE FROM blobs WHERE session_id = ?", (session_id,))
            db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

        await self._run(run, small=False)

    async def acquire(
        self, session_id: str, owner: str, url: str, ttl: float, steal: int | None = None
    ) -> Fence | None:
        def run(db: sqlite3.Cursor) -> Fence | None:
            row = db.execute("SELECT epoch FROM sessions WHERE id = ?", (session_id,)).fetchone()
            if row is None:
                return None
            fence = Fence.new(int(row[0]) + 1)
            db.execute(
                "UPDATE sessions SET epoch = ?, nonce = ?, lease_owner = ?, lease_url = ?, lease_expires = ? "
                "WHERE id = ?",
                (fence.epoch, fence.nonce, owner, url, time.time() + ttl, session_id),
            )
            return fence

        return await self._run(run)

    async def renew_many(self, renewals: list[Renewal], ttl: float) -> list[bool | None]:
        def run(db: sqlite3.Cursor) -> list[bool | None]:
            done: list[bool | None] = []
            for r in renewals:
                cur = db.execute(
                    "UPDATE sessions SET lease_owner = ?, lease_url = ?, lease_expires = ?, ran = max(ran, ?) "
                    "WHERE id = ? AND epoch = ? AND nonce = ?",
                    (r.owner, r.url, time.time() + ttl, r.ran, r.session_id, r.fence.epoch, r.fence.nonce),
                )
                done.append(cur.rowcount == 1)
            return done

        return await self._run(run)

    async def release(self, session_id: str, owner: str, fence: Fence) -> None:
        def run(db: sqlite3.Cursor) -> None:
            db.execute(
                "UPDATE sessions SET lease_owner = NULL, lease_url = NULL, lease_expires = NULL "
                "WHERE id = ? AND epoch = ? AND nonce = ? AND lease_owner = ?",
                (session_id, fence.epoch, fence.nonce, owner),
            )

        await self._run(run)

    async def commit(self, session_id: str, fence: Fence, commit: Commit, ttl: float) -> None:
        def run(db: sqlite3.Cursor) -> None:
            # The fence is checked by the update itself (one statement fewer per cell); a stale one rolls the
            # transaction back before any blob is written.
            cur = db.execute(
                "UPDATE sessions SET manifest = ?, manifest_sig = ?, fields = ?, expires = ?, ran = ? "
                "WHERE id = ? AND epoch = ? AND nonce = ?",
                (
                    commit.manifest,
                    commit.manifest_sig,
                    orjson.dumps(commit.record.to_fields()).decode(),
                    time.time() + self._ttl,
                    commit.record.execution_count,
                    session_id,
                    fence.epoch,
                    fence.nonce,
                ),
            )
            if cur.rowcount != 1:
                raise StaleEpoch(f"session {session_id!r}: epoch {fence.epoch} is no longer current")
            for key, data in commit.blobs.items():
                db.execute(
                    "INSERT OR REPLACE INTO blobs (session_id, key, data) VALUES (?, ?, ?)", (session_id, key, data)
                )
            for key in commit.drop:
                db.execute("DELETE FROM blobs WHERE session_id = ? AND key = ?", (session_id, key))

        size = len(commit.manifest) + sum(len(b) for b in commit.blobs.values())
        await self._run(run, small=size <= _SMALL)

    async def load_manifest(self, session_id: str) -> tuple[bytes, str] | None:
        def run(db: sqlite3.Cursor) -> tuple[bytes, str] | None:
            row = db.execute("SELECT manifest, manifest_sig FROM sessions WHERE id = ?", (session_id,)).fetchone()
            if row is None or row[0] is None:
                return None
            return bytes(row[0]), str(row[1])

        return await self._run(run)

    async def load_blobs(self, session_id: str, keys: list[str]) -> dict[str, list[bytes]]:
        def run(db: sqlite3.Cursor) -> dict[str, list[bytes]]:
            found: dict[str, list[bytes]] = {}
            for key in keys:
                sql = "SELECT data FROM blobs WHERE session_id = ? AND key = ?"
                row = db.execute(sql, (session_id, key)).fetchone()
                if row is not None:
                    found[key] = [bytes(row[0])]
            return found

        return await self._run(run, small=False)

    async def close(self) -> None:
        def run() -> None:
            with self._lock:
                self._db.close()
            fcntl.flock(self._lockfile, fcntl.LOCK_UN)
            self._lockfile.close()

        await asyncio.to_thread(run)
