"""The Redis state store: every key of a session shares the ``{session_id}`` hash tag (Redis Cluster ready),
commits are fenced by the lease epoch in Lua, blobs are chunked, and everything expires with the session."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .base import Commit, Lease, SessionRecord, StaleEpoch, StoreUnavailable

CHUNK = 8 * 1024 * 1024
INDEX = "skg:sessions"
T = TypeVar("T")

_ACQUIRE = """
if redis.call('EXISTS', KEYS[3]) == 0 then return -2 end
local holder = redis.call('HGET', KEYS[1], 'owner')
if holder and holder ~= ARGV[1] then
  local current = tonumber(redis.call('GET', KEYS[2]) or '0')
  if ARGV[4] == '' or tonumber(ARGV[4]) ~= current then return -1 end
end
local epoch = redis.call('INCR', KEYS[2])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'url', ARGV[2], 'epoch', epoch, 'expires',
  tonumber(ARGV[5]) + tonumber(ARGV[3]))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return epoch
"""

_RENEW = """
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner then
  if owner ~= ARGV[1] or redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[2] then return 0 end
elseif redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'url', ARGV[5], 'epoch', ARGV[2],
  'expires', tonumber(ARGV[4]) + tonumber(ARGV[3]))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

_RELEASE = """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] and redis.call('HGET', KEYS[1], 'epoch') == ARGV[2] then
  redis.call('DEL', KEYS[1])
end
return 1
"""

# KEYS: epoch, manifest, meta, then nkeep blob keys to keep alive, ndrop to delete, and the small new blobs.
# ARGV: epoch, manifest, sig, ttl, nkeep, ndrop, nfields, the meta fields as name/value pairs, the new blobs.
_COMMIT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local ttl = ARGV[4]
local nkeep, ndrop, nfields = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
redis.call('HSET', KEYS[2], 'data', ARGV[2], 'sig', ARGV[3])
for i = 8, 7 + 2 * nfields, 2 do redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1]) end
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ttl) end
for i = 4, 3 + nkeep do redis.call('PEXPIRE', KEYS[i], ttl) end
for i = 4 + nkeep, 3 + nkeep + ndrop do redis.call('DEL', KEYS[i]) end
local arg = 8 + 2 * nfields
for i = 4 + nkeep + ndrop, #KEYS do
  redis.call('DEL', KEYS[i])
  redis.call('RPUSH', KEYS[i], ARGV[arg])
  redis.call('PEXPIRE', KEYS[i], ttl)
  arg = arg + 1
end
return 1
"""

# New blobs up to this size travel inside the commit script: one round trip for a typical cell.
INLINE_BLOBS = 1024 * 1024


def _k(session_id: str, part: str) -> str:
    return f"skg:{{{session_id}}}:{part}"


def _blob_key(session_id: str, key: str) -> str:
    return _k(session_id, f"blob:{key}")


class RedisStore:
    def __init__(self, url: str, session_ttl: float, password: str | None = None) -> None:
        self._redis = aioredis.Redis.from_url(
            url,
            password=password,
            socket_timeout=15,
            socket_connect_timeout=2,
            health_check_interval=10,
            decode_responses=False,
            # A pooled connection that died with a Redis restart fails its next command: retry once on a
            # fresh one before calling the store unavailable.
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=1),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
        self._ttl_ms = int(session_ttl * 1000)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._renew = self._redis.register_script(_RENEW)
        self._release = self._redis.register_script(_RELEASE)
        self._commit = self._redis.register_script(_COMMIT)

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await fn()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise StoreUnavailable(f"Redis is unreachable: {exc}") from exc
        except RedisError as exc:
            raise StoreUnavailable(f"Redis error: {exc}") from exc

    async def ping(self) -> None:
        await self._call(self._redis.ping)

    async def create(self, record: SessionRecord) -> bool:
        meta = _k(record.id, "meta")

        async def run() -> bool:
            created = await self._redis.hsetnx(meta, "kernel_name", record.kernel_name)
            if not created:
                return False
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(meta, mapping=record.to_fields())  # type: ignore[arg-type]
                pipe.pexpire(meta, self._ttl_ms)
                pipe.zadd(INDEX, {record.id: record.created})
                await pipe.execute()
            return True

        return await self._call(run)

    async def get(self, session_id: str) -> SessionRecord | None:
        async def run() -> SessionRecord | None:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(_k(session_id, "meta"))
                pipe.hgetall(_k(session_id, "lease"))
                meta, lease = await pipe.execute()
            if not meta:
                return None
            return SessionRecord.from_fields(session_id, _decode(meta), _lease(lease))

        return await self._call(run)

    async def list_sessions(self) -> list[SessionRecord]:
        async def run() -> list[SessionRecord]:
            raw: list[Any] = await self._redis.zrange(INDEX, 0, -1)
            ids = [bytes(i).decode() for i in raw]
            async with self._redis.pipeline(transaction=False) as pipe:
                for session_id in ids:
                    pipe.hgetall(_k(session_id, "meta"))
                    pipe.hgetall(_k(session_id, "lease"))
                found = await pipe.execute()
            records, expired = [], []
            for i, session_id in enumerate(ids):
                meta, lease = found[2 * i], found[2 * i + 1]
                if meta:
                    records.append(SessionRecord.from_fields(session_id, _decode(meta), _lease(lease)))
                else:
                    expired.append(session_id)
            if expired:  # their keys expired: prune the index
                await self._redis.zrem(INDEX, *expired)
            return records

        return await self._call(run)

    async def delete(self, session_id: str) -> None:
        async def run() -> None:
            pattern = _k(session_id, "*")
            keys: list[bytes] = [k async for k in self._redis.scan_iter(match=pattern, count=500)]
            async with self._redis.pipeline(transaction=False) as pipe:
                if keys:
                    pipe.delete(*keys)
                pipe.zrem(INDEX, session_id)
                await pipe.execute()

        await self._call(run)

    async def acquire(self, session_id: str, owner: str, url: str, ttl: float, steal: int | None = None) -> int | None:
        keys = [_k(session_id, "lease"), _k(session_id, "epoch"), _k(session_id, "meta")]
        args: list[Any] = [owner, url, int(ttl * 1000), "" if steal is None else steal, _now_ms(), self._ttl_ms]
        result = int(await self._call(lambda: self._acquire(keys=keys, args=args)))
        return result if result > 0 else None

    async def renew(self, session_id: str, owner: str, url: str, epoch: int, ttl: float) -> bool:
        keys = [_k(session_id, "lease"), _k(session_id, "epoch")]
        args: list[Any] = [owner, epoch, int(ttl * 1000), _now_ms(), url]
        return bool(await self._call(lambda: self._renew(keys=keys, args=args)))

    async def release(self, session_id: str, owner: str, epoch: int) -> None:
        await self._call(lambda: self._release(keys=[_k(session_id, "lease")], args=[owner, epoch]))

    async def commit(self, session_id: str, epoch: int, commit: Commit, ttl: float) -> None:
        ttl_ms = self._ttl_ms

        inline = sum(len(b) for b in commit.blobs.values()) <= INLINE_BLOBS

        async def write_blobs() -> None:
            if not commit.blobs or inline:
                return
            # Blobs are content-addressed (group id + hash): writing one that is never referenced is harmless,
            # so they go first and the fenced manifest swap below is what makes the checkpoint current.
            async with self._redis.pipeline(transaction=True) as pipe:
                for key, data in commit.blobs.items():
                    bkey = _blob_key(session_id, key)
                    pipe.delete(bkey)
                    view = memoryview(data)
                    chunks: list[Any] = [view[i : i + CHUNK] for i in range(0, len(data), CHUNK)] or [b""]
                    pipe.rpush(bkey, *chunks)
                    pipe.pexpire(bkey, ttl_ms)
                await pipe.execute()

        await self._call(write_blobs)
        keep = [_blob_key(session_id, k) for k in commit.keep]
        drop = [_blob_key(session_id, k) for k in commit.drop]
        new = list(commit.blobs.items()) if inline else []
        keys = [
            _k(session_id, "epoch"), _k(session_id, "manifest"), _k(session_id, "meta"),
            *keep, *drop, *(_blob_key(session_id, k) for k, _ in new),
        ]  # fmt: skip
        fields = commit.record.to_fields()
        args: list[Any] = [epoch, commit.manifest, commit.manifest_sig, ttl_ms, len(keep), len(drop), len(fields)]
        for name, value in fields.items():
            args += [name, value]
        args += [data for _, data in new]
        ok = await self._call(lambda: self._commit(keys=keys, args=args))
        if not ok:
            raise StaleEpoch(f"session {session_id!r}: epoch {epoch} is no longer current")

    async def load_manifest(self, session_id: str) -> tuple[bytes, str] | None:
        found: list[Any] = await self._call(lambda: self._redis.hmget(_k(session_id, "manifest"), ["data", "sig"]))
        data, sig = found
        if data is None or sig is None:
            return None
        return bytes(data), sig.decode()

    async def load_blobs(self, session_id: str, keys: list[str]) -> dict[str, list[bytes]]:
        async def run() -> dict[str, list[bytes]]:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.lrange(_blob_key(session_id, key), 0, -1)
                results = await pipe.execute()
            return {key: chunks for key, chunks in zip(keys, results, strict=True) if chunks}

        return await self._call(run)

    async def close(self) -> None:
        await self._redis.aclose()


def _now_ms() -> int:
    return int(time.time() * 1000)


def _decode(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


def _lease(raw: dict[bytes, bytes]) -> Lease | None:
    if not raw:
        return None
    fields = _decode(raw)
    return Lease(
        owner=fields.get("owner", ""),
        url=fields.get("url", ""),
        epoch=int(fields.get("epoch") or 0),
        expires_at=float(fields.get("expires") or 0) / 1000,
    )
