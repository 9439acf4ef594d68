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

from .base import Commit, Lease, SessionRecord, StaleEpoch, StoreUnavailable

T = TypeVar("T")

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
  expires REAL NOT NULL
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
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._ttl = session_ttl

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def locked() -> T:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(self._db)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
                return result

        return await asyncio.to_thread(locked)

    async def ping(self) -> None:
        await self._run(lambda db: db.execute("SELECT 1").fetchone())

    def _purge_expired(self, db: sqlite3.Connection) -> None:
        expired = [r[0] for r in db.execute("SELECT id FROM sessions WHERE expires < ?", (time.time(),))]
        for session_id in expired:
            db.execute("DELETE FROM blobs WHERE session_id = ?", (session_id,))
            db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

    async def create(self, record: SessionRecord) -> bool:
        def run(db: sqlite3.Connection) -> bool:
            self._purge_expired(db)
            cur = db.execute(
                "INSERT OR IGNORE INTO sessions (id, fields, expires) VALUES (?, ?, ?)",
                (record.id, json.dumps(record.to_fields()), time.time() + self._ttl),
            )
            return cur.rowcount == 1

        return await self._run(run)

    @staticmethod
    def _record(row: tuple[str, str, int, str | None, str | None, float | None]) -> SessionRecord:
        session_id, fields, epoch, owner, url, expires = row
        lease = Lease(owner, url or "", epoch, expires or 0.0) if owner else None
        return SessionRecord.from_fields(session_id, json.loads(fields), lease)

    async def get(self, session_id: str) -> SessionRecord | None:
        def run(db: sqlite3.Connection) -> SessionRecord | None:
            row = db.execute(
                "SELECT id, fields, epoch, lease_owner, lease_url, lease_expires FROM sessions "
                "WHERE id = ? AND expires >= ?",
                (session_id, time.time()),
            ).fetchone()
            return self._record(row) if row else None

        return await self._run(run)

    async def list_sessions(self) -> list[SessionRecord]:
        def run(db: sqlite3.Connection) -> list[SessionRecord]:
            self._purge_expired(db)
            rows = db.execute(
                "SELECT id, fields, epoch, lease_owner, lease_url, lease_expires FROM sessions ORDER BY rowid"
            ).fetchall()
            return [self._record(r) for r in rows]

        return await self._run(run)

    async def delete(self, session_id: str) -> None:
        def run(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM blobs WHERE session_id = ?", (session_id,))
            db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

        await self._run(run)

    async def acquire(self, session_id: str, owner: str, url: str, ttl: float, steal: int | None = None) -> int | None:
        def run(db: sqlite3.Connection) -> int | None:
            row = db.execute("SELECT epoch FROM sessions WHERE id = ?", (session_id,)).fetchone()
            if row is None:
                return None
            epoch = int(row[0]) + 1
            db.execute(
                "UPDATE sessions SET epoch = ?, lease_owner = ?, lease_url = ?, lease_expires = ? WHERE id = ?",
                (epoch, owner, url, time.time() + ttl, session_id),
            )
            return epoch

        return await self._run(run)

    async def renew(self, session_id: str, owner: str, url: str, epoch: int, ttl: float) -> bool:
        def run(db: sqlite3.Connection) -> bool:
            cur = db.execute(
                "UPDATE sessions SET lease_owner = ?, lease_url = ?, lease_expires = ? WHERE id = ? AND epoch = ?",
                (owner, url, time.time() + ttl, session_id, epoch),
            )
            return cur.rowcount == 1

        return await self._run(run)

    async def release(self, session_id: str, owner: str, epoch: int) -> None:
        def run(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE sessions SET lease_owner = NULL, lease_url = NULL, lease_expires = NULL "
                "WHERE id = ? AND epoch = ? AND lease_owner = ?",
                (session_id, epoch, owner),
            )

        await self._run(run)

    async def commit(self, session_id: str, epoch: int, commit: Commit, ttl: float) -> None:
        def run(db: sqlite3.Connection) -> None:
            row = db.execute("SELECT epoch FROM sessions WHERE id = ?", (session_id,)).fetchone()
            if row is None or int(row[0]) != epoch:
                raise StaleEpoch(f"session {session_id!r}: epoch {epoch} is no longer current")
            for key, data in commit.blobs.items():
                db.execute(
                    "INSERT OR REPLACE INTO blobs (session_id, key, data) VALUES (?, ?, ?)", (session_id, key, data)
                )
            for key in commit.drop:
                db.execute("DELETE FROM blobs WHERE session_id = ? AND key = ?", (session_id, key))
            db.execute(
                "UPDATE sessions SET manifest = ?, manifest_sig = ?, fields = ?, expires = ? WHERE id = ?",
                (
                    commit.manifest,
                    commit.manifest_sig,
                    json.dumps(commit.record.to_fields()),
                    time.time() + self._ttl,
                    session_id,
                ),
            )

        await self._run(run)

    async def load_manifest(self, session_id: str) -> tuple[bytes, str] | None:
        def run(db: sqlite3.Connection) -> tuple[bytes, str] | None:
            row = db.execute("SELECT manifest, manifest_sig FROM sessions WHERE id = ?", (session_id,)).fetchone()
            if row is None or row[0] is None:
                return None
            return bytes(row[0]), str(row[1])

        return await self._run(run)

    async def load_blobs(self, session_id: str, keys: list[str]) -> dict[str, list[bytes]]:
        def run(db: sqlite3.Connection) -> dict[str, list[bytes]]:
            found: dict[str, list[bytes]] = {}
            for key in keys:
                sql = "SELECT data FROM blobs WHERE session_id = ? AND key = ?"
                row = db.execute(sql, (session_id, key)).fetchone()
                if row is not None:
                    found[key] = [bytes(row[0])]
            return found

        return await self._run(run)

    async def close(self) -> None:
        def run() -> None:
            with self._lock:
                self._db.close()
            fcntl.flock(self._lockfile, fcntl.LOCK_UN)
            self._lockfile.close()

        await asyncio.to_thread(run)
