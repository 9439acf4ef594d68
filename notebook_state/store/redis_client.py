"""The Redis connection of the store: one Redis, or a Redis Cluster (which follows MOVED and failovers).

Timeouts are short on purpose: a store call must fail well inside a lease's lifetime, so that a replica cut
off from Redis learns it while its lease is still certainly valid, and a client waits seconds, not minutes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection, UnixDomainSocketConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.connection import HiredisRespSerializer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MovedError, NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.utils import HIREDIS_AVAILABLE

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def cluster_url(url: str) -> tuple[str, bool]:
    """``redis+cluster://host:port`` names a cluster (by any of its nodes): the plain URL, and True."""
    parts = urlsplit(url)
    if parts.scheme in CLUSTER_SCHEMES:
        return urlunsplit(parts._replace(scheme=CLUSTER_SCHEMES[parts.scheme])), True
    return url, False


def _options(timeout: float, *, per_reply: bool = True) -> dict[str, Any]:
    return {
        # Without a socket timeout the caller bounds each call as a whole (``RedisStore._call``): redis-py's
        # asyncio connection sends under ``asyncio.wait_for`` when it has one, a task and two more turns of the
        # event loop per command. A cluster keeps it: redis-py's cluster client fails over on a node's timeout.
        "socket_timeout": timeout if per_reply else None,
        "socket_connect_timeout": timeout,
        "decode_responses": False,
        # A pooled connection that died with a Redis restart fails its next command: retry once on a fresh
        # one before calling the store unavailable (each attempt bounded by the timeout above).
        "retry": Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=1),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    }


_HIREDIS = HiredisRespSerializer()


def _pack_in_c(self: AbstractConnection, *args: Any) -> list[bytes]:
    """redis-py's asyncio connections pack every command in Python, argument by argument; its sync ones use
    hiredis when it is installed. A checkpoint's commit is one script call of ~20 arguments per cell, and packing
    was a third of that call's CPU. A command with a memoryview (a blob's chunks) keeps redis-py's packer, which
    sends those without copying them."""
    if any(type(arg) is memoryview for arg in args):
        return AbstractConnection.pack_command(self, *args)
    packed: list[bytes] = _HIREDIS.pack(*args)
    return packed


class _CConnection(Connection):
    pack_command = _pack_in_c


class _CSSLConnection(SSLConnection):
    pack_command = _pack_in_c


class _CUnixConnection(UnixDomainSocketConnection):
    pack_command = _pack_in_c


_PACKED_IN_C: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: _CConnection,
    SSLConnection: _CSSLConnection,
    UnixDomainSocketConnection: _CUnixConnection,
}


def packing_in_c(client: aioredis.Redis) -> aioredis.Redis:
    """``client``, its connections made with hiredis' command packer (when hiredis is installed; a connection
    class of someone else's is left alone). Its pool makes its connections on first use: none is made yet."""
    pool = client.connection_pool
    if HIREDIS_AVAILABLE:
        pool.connection_class = _PACKED_IN_C.get(pool.connection_class, pool.connection_class)
    return client


@dataclass
class RedisClient:
    redis: Any  # aioredis.Redis | RedisCluster: the same command API
    cluster: bool
    password: str | None
    timeout: float
    _nodes: dict[tuple[str, int], aioredis.Redis] = field(default_factory=dict)

    async def ping(self) -> None:
        if self.cluster:
            await self.redis.ping(target_nodes=RedisCluster.PRIMARIES)
        else:
            await self.redis.ping()

    async def eval_and_wait(
        self, slot_key: str, script: str, keys: list[str], args: list[Any], replicas: int, wait_ms: int
    ) -> tuple[Any, int]:
        """Run a script, then WAIT for ``replicas`` on the same connection; (script result, replicas that
        acknowledged). On a cluster, both go to the primary of the script's slot."""
        for attempt in (0, 1):
            client = self.redis if not self.cluster else self._node_for(slot_key)
            try:
                async with client.pipeline(transaction=False) as pipe:
                    pipe.eval(script, len(keys), *keys, *args)
                    pipe.execute_command("WAIT", replicas, wait_ms)
                    result, acked = await pipe.execute()
                return result, int(acked)
            except (MovedError, RedisConnectionError) as exc:
                if not self.cluster or attempt == 1:
                    raise
                if isinstance(exc, RedisConnectionError):
                    self._nodes.pop(self._address(slot_key), None)
                await self.redis.nodes_manager.initialize()  # the slot moved (a failover): learn where to
        raise AssertionError("unreachable")

    async def evalsha(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        """A registered script, run as redis-py's ``AsyncScript`` runs it (EVALSHA; on NOSCRIPT, from a Redis
        that restarted, SCRIPT LOAD and once more), on a pooled connection, and once more on a fresh connection
        when a pooled one turns out broken, as the pool's Retry does. Without redis-py's per-command layers
        (deprecation checks, observability hooks, the retry wrapper): a commit's script is the one Redis command
        of every cell, and those layers were ~40 % of its CPU. A cluster's go through its client (slots,
        redirects)."""
        if self.cluster:
            return await script(keys=keys, args=args)
        pool = self.redis.connection_pool
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        for attempt in (0, 1):
            conn = await pool.get_connection()
            try:
                await conn.send_command(*command)
                try:
                    return await conn.read_response()
                except NoScriptError:
                    await conn.send_command("SCRIPT LOAD", script.script)
                    await conn.read_response()
                    await conn.send_command(*command)
                    return await conn.read_response()
            except RedisConnectionError:  # redis-py's own for a socket that failed (it disconnected it)
                if attempt == 1:
                    raise
            finally:
                await pool.release(conn)
        raise AssertionError("unreachable")

    def _address(self, slot_key: str) -> tuple[str, int]:
        node = self.redis.get_node_from_key(slot_key)
        return str(node.host), int(node.port)

    def _node_for(self, slot_key: str) -> aioredis.Redis:
        address = self._address(slot_key)
        node = self._nodes.get(address)
        if node is None:
            node = aioredis.Redis(host=address[0], port=address[1], password=self.password, **_options(self.timeout))
            node = packing_in_c(node)
            self._nodes[address] = node
        return node

    async def close(self) -> None:
        for node in self._nodes.values():
            await node.aclose()
        await self.redis.aclose()


def connect(url: str, password: str | None, *, cluster: bool, timeout: float) -> RedisClient:
    url, by_scheme = cluster_url(url)
    if cluster or by_scheme:
        parts = urlsplit(url)
        redis: Any = RedisCluster(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            password=password or parts.password,
            username=parts.username,
            ssl=parts.scheme == "rediss",
            **_options(timeout),
        )
        return RedisClient(redis, True, password or parts.password, timeout)
    options = _options(timeout, per_reply=False)
    redis = packing_in_c(aioredis.Redis.from_url(url, password=password, health_check_interval=10, **options))
    return RedisClient(redis, False, password, timeout)
