"""The service's one typed configuration object.

Every option is a field here: it can be set by a CLI flag (``--pool-size 4``) or an environment variable with
the ``SKG_`` prefix (``SKG_POOL_SIZE=4``). ``$PORT`` is honoured as Knative sets it.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, ByteSize, Field, IPvAnyNetwork, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .tenants import Tenants

ENV_PREFIX = "SKG_"


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    """Configuration of one gateway replica."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        cli_prog_name="skg serve",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        extra="ignore",
    )

    host: str = Field("127.0.0.1", description="Address to bind. A non-loopback address requires a token.")
    port: int = Field(
        8888,
        ge=0,
        le=65535,
        validation_alias=AliasChoices("port", "SKG_PORT", "PORT"),
        description="Port to listen on (0 picks a free one). $PORT is honoured, as Knative sets it.",
    )
    token: SecretStr | None = Field(
        None,
        description="Auth token. Clients send 'Authorization: token <t>' or 'Bearer <t>'. "
        "Required unless bound to loopback.",
    )
    kernel_name: str = Field("python3", description="Kernelspec used for new sessions and the warm pool.")
    pool_size: int = Field(2, ge=0, le=256, description="Pre-started kernels kept warm for new sessions.")
    kernel_startup_timeout: float = Field(60.0, gt=0, description="Seconds a kernel may take to become ready.")
    execution_timeout: float = Field(300.0, gt=0, description="Default limit in seconds for one cell on the REST face.")
    max_execution_timeout: float = Field(3600.0, gt=0, description="Largest timeout a REST request may ask for.")
    interrupt_grace: float = Field(
        5.0, gt=0, description="Seconds an interrupted cell may take to stop before its kernel is replaced."
    )
    output_limit: int = Field(
        1_048_576, ge=1024, description="Bytes of output kept per REST execution; the rest is truncated."
    )
    max_body_size: int = Field(1_048_576, ge=1024, description="Largest request body in bytes (413 beyond).")
    evict_idle_after: float = Field(
        1800.0,
        ge=0,
        description="Evict a session's kernel to the store after this many idle seconds with no open WebSocket; "
        "its next use restores it (0: never).",
    )
    redis_url: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("redis_url", "SKG_REDIS_URL", "REDIS_URL"),
        description="Redis for session state shared by replicas (redis://[:password@]host:port/db). "
        "Unset: the embedded store under --data-dir (one process).",
    )
    redis_password: SecretStr | None = Field(
        None, description="Redis password, if not in the URL (kept out of the URL so it can come from a Secret)."
    )
    signing_key: SecretStr | None = Field(
        None,
        description="Key (hex or text, 16+ bytes) that signs checkpoints; every replica sharing a Redis needs "
        "the same one. Unset with the embedded store: one is generated in the data dir.",
    )
    checkpoint: bool = Field(True, description="Checkpoint every session after each cell.")
    preload_modules: list[str] = Field(
        ["numpy", "pandas"],
        description="Modules imported (not bound) into warm kernels ahead of use, when installed: first imports "
        "and restores that need them are then instant. Costs memory per pooled kernel.",
    )
    kernel_launch: Literal["auto", "fork", "exec"] = Field(
        "auto",
        description="How kernels of --kernel-name start: forked from a preloaded zygote (memory shared, ready in "
        "milliseconds), or exec'd. auto forks unless the sandbox gives each kernel a uid of its own "
        "(docs/security.md).",
    )
    checkpoint_timeout: float = Field(120.0, gt=0, description="Seconds a checkpoint or restore may take.")
    lease_ttl: float = Field(
        15.0,
        gt=0,
        description="Seconds a replica's lease on a session lasts unrenewed. A replica stops running a session "
        "once its lease may have lapsed; a paused or partitioned owner costs its sessions about this long.",
    )
    redis_cluster: bool = Field(
        False,
        description="--redis-url names a node of a Redis Cluster (as does a redis+cluster:// URL): use the cluster "
        "client, which follows MOVED and failovers.",
    )
    redis_timeout: float = Field(
        2.0,
        gt=0,
        description="Seconds one store call may take, all its round trips together (on a Redis Cluster, also each "
        "reply); at most a quarter of the lease TTL is used, so a replica cut off from Redis learns it while its "
        "lease is still valid.",
    )
    redis_wait_replicas: int = Field(
        0,
        ge=0,
        le=16,
        description="Acquisitions and checkpoint commits wait until this many Redis replicas have them (WAIT), so "
        "a Redis failover cannot lose an acknowledged cell. Costs one replication round trip per commit; a "
        "commit that is not replicated in time stays pending.",
    )
    session_ttl: float = Field(
        7 * 24 * 3600.0, gt=0, description="Seconds an untouched session is kept in the store before it expires."
    )
    advertise_url: str | None = Field(
        None,
        description="URL other replicas use to reach this one (e.g. http://$(POD_IP):8080). "
        "Default: http://<host>:<port> as bound.",
    )
    forward_timeout: float = Field(
        0.0,
        ge=0,
        description="Upper bound in seconds on a request forwarded to a session's owner (0: the longest a cell "
        "may take plus its checkpoint). A paused or partitioned owner is given up on sooner, when its lease "
        "lapses (503 + Retry-After).",
    )
    ws_idle_timeout: float = Field(
        0.0,
        ge=0,
        description="Close a kernel WebSocket after this many seconds without traffic (0: never), "
        "so that idle tabs let a Knative service scale to zero.",
    )
    ws_send_queue: int = Field(
        10_000, ge=16, description="Messages buffered for one slow WebSocket client before it is dropped."
    )
    ws_replay_bytes: int = Field(
        8 * 1024 * 1024,
        ge=0,
        description="Bytes of kernel messages a session keeps while no WebSocket is attached, replayed to the "
        "next connection of the same client session (?session_id=) so that a cut socket loses no output.",
    )
    shutdown_grace: float = Field(30.0, ge=0, description="On SIGTERM, seconds that running cells get to finish.")
    allowed_kernel_env_prefix: str = Field(
        "KERNEL_", description="Only env vars with this prefix from POST /api/kernels reach the kernel."
    )
    data_dir: Path = Field(
        Path(".skg"), description="Directory for connection files and, later, the local state store."
    )
    log_level: str = Field("info", description="Logging level.")
    log_json: bool = Field(True, description="Structured JSON logs (one object per line).")

    # -- tenants, trust and browsers (docs/security.md) -------------------------------------------------------
    tenants_file: Path | None = Field(
        None,
        description="JSON object mapping each tenant's name to the SHA-256 hex digest of its token, or to "
        '{"token_sha256": ..., "max_sessions": n, "kernel_memory": bytes}. With it, every request needs a '
        "tenant's token (on loopback too), and a session exists only for the tenant that created it.",
    )
    tenant_max_sessions: int = Field(
        0, ge=0, description="Sessions one tenant may have at once (0: no limit); a tenants-file entry may differ."
    )
    peer_cidr: list[IPvAnyNetwork] = Field(
        [],
        description="Networks other replicas' addresses lie in. An owner URL read from the store outside them "
        "is never contacted. Default: the advertise URL's host, or any address when that is a name.",
    )
    peer_url_pattern: str | None = Field(
        None,
        description="Regular expression every owner URL read from the store must match in full "
        r"(e.g. 'http://10\.0\.\d+\.\d+:8080'); others are never contacted.",
    )
    allowed_hosts: list[str] = Field(
        [],
        description="Host header values accepted when bound to loopback without a token, besides localhost, "
        "127.0.0.1 and [::1] (a DNS-rebinding page sends its own host name).",
    )
    allowed_origins: list[str] = Field(
        [],
        description="Origins (scheme://host:port) whose pages may open kernel WebSockets when bound to loopback "
        "without a token, besides the gateway's own loopback origins.",
    )

    # -- kernel sandbox and limits ----------------------------------------------------------------------------
    sandbox: Literal["auto", "bwrap", "uid", "none"] = Field(
        "auto",
        description="How kernels are isolated: bubblewrap namespaces, else a uid of their own (as root), else "
        "none (auto picks the strongest that works and reports it at start and in /readyz; naming one makes "
        "start fail without it).",
    )
    sandbox_tmp_size: ByteSize = Field(
        ByteSize(512 * 1024**2), gt=0, description="Size of a sandboxed kernel's private /tmp (and of its /dev/shm)."
    )
    sandbox_bind: list[Path] = Field(
        [], description="Host directories bound read-write into every kernel's sandbox (shared data, notebooks)."
    )
    sandbox_network: bool = Field(True, description="Sandboxed kernels reach the network (off: loopback only).")
    sandbox_uid_base: int = Field(
        50_000, ge=1, description="First uid given to kernels that run as a uid of their own."
    )
    sandbox_uid_count: int = Field(10_000, ge=1, description="How many uids from --sandbox-uid-base kernels may use.")
    kernel_memory_limit: ByteSize = Field(
        ByteSize(0),
        ge=0,
        description="Address space a kernel may use (RLIMIT_AS, e.g. 4GiB; 0: no limit); a tenants-file entry "
        "may set its own. A kernel that goes over it is replaced and its session restored from its last checkpoint.",
    )
    kernel_env_allow: list[str] = Field(
        [], description="Names of the service's environment variables that kernels inherit besides the allow-list."
    )

    # -- bounded resources ------------------------------------------------------------------------------------
    max_sessions: int = Field(
        0,
        ge=0,
        description="Sessions one replica serves at once (0: no limit). Beyond it, new and restored sessions get "
        "503 + Retry-After, so that the platform scales out instead of the replica running out of memory.",
    )
    checkpoint_max_bytes: ByteSize = Field(
        ByteSize(4 * 1024**3), gt=0, description="Largest checkpoint a kernel may hand over (read into memory)."
    )
    ws_send_queue_bytes: ByteSize = Field(
        ByteSize(64 * 1024**2), gt=0, description="Bytes buffered for one slow WebSocket client before it is dropped."
    )
    stream_queue_bytes: ByteSize = Field(
        ByteSize(16 * 1024**2),
        gt=0,
        description="Bytes of output buffered for one slow SSE client; beyond it outputs are dropped (the final "
        "reply still comes, with every output).",
    )
    header_timeout: float = Field(
        10.0, gt=0, description="Seconds a client may take to send a request's headers (and idle keep-alive time)."
    )
    limit_concurrency: int = Field(
        1000, ge=0, description="Connections and requests served at once; beyond it, 503 (0: no limit)."
    )

    @model_validator(mode="after")
    def _tenants_and_peers_usable(self) -> Settings:
        if self.tenants_file is not None:
            Tenants(self.tenants_file, "")  # TenantsFileError (a ValueError) names what is wrong
        if self.peer_url_pattern is not None:
            try:
                re.compile(self.peer_url_pattern)
            except re.error as exc:
                raise ValueError(f"peer_url_pattern is not a regular expression: {exc}") from None
        return self

    @model_validator(mode="after")
    def _token_required_off_loopback(self) -> Settings:
        if not is_loopback(self.host) and not self.token_value and self.tenants_file is None:
            raise ValueError(
                f"refusing to bind {self.host!r} without a token: set --token or {ENV_PREFIX}TOKEN "
                "(or --tenants-file), or bind to 127.0.0.1"
            )
        if self.redis_url is not None and self.signing_key is None:
            raise ValueError(
                f"with Redis, every replica must share a checkpoint signing key: set {ENV_PREFIX}SIGNING_KEY"
            )
        if self.execution_timeout > self.max_execution_timeout:
            raise ValueError("execution_timeout must not exceed max_execution_timeout")
        return self

    @property
    def signing_key_bytes(self) -> bytes | None:
        if self.signing_key is None:
            return None
        raw = self.signing_key.get_secret_value()
        try:
            return bytes.fromhex(raw)
        except ValueError:
            return raw.encode()

    def public_url(self, bound_host: str, bound_port: int) -> str:
        """The URL other replicas reach this one at: --advertise-url, else the bound address (the pod's own
        address when bound to all interfaces, as in a container)."""
        if self.advertise_url:
            return self.advertise_url.rstrip("/")
        host = bound_host
        if host in ("0.0.0.0", "::", ""):
            try:
                host = socket.gethostbyname(socket.gethostname())
            except OSError:
                host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{bound_port}"

    @property
    def store_timeout(self) -> float:
        return min(self.redis_timeout, self.lease_ttl / 4)

    @property
    def forward_limit(self) -> float:
        """The longest a forwarded request may take: the owner's own limit on a cell, plus its checkpoint."""
        if self.forward_timeout > 0:
            return self.forward_timeout
        return self.max_execution_timeout + self.interrupt_grace + self.checkpoint_timeout + self.lease_ttl

    @property
    def token_value(self) -> str:
        return self.token.get_secret_value() if self.token else ""
