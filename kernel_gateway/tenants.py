"""Tenants: who a token belongs to, and what that tenant may use.

``--tenants-file`` names a JSON object mapping each tenant's name to the SHA-256 hex digest of its token, or
to ``{"token_sha256": ..., "max_sessions": n, "kernel_memory": "4GiB"}``. Only digests are stored, so the
file (a Kubernetes Secret, say) grants nothing by itself. It is read again when it changes, so adding a
tenant needs no restart. ``--token`` is the default tenant (named ``""``), as is every request when the
service runs without any token on loopback.

With JupyterHub, each hub user is a tenant: the spawner derives the user's token from a key it shares with
whoever writes the tenants file (``derive_token``), and ``skg tenants`` writes that file from the user names.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_TENANT = ""
"""The tenant of ``--token`` (and of everything when no token is configured)."""

TENANT_NAME = re.compile(r"^[A-Za-z0-9_.@+=-]{1,128}$")
"""Tenant names: no spaces, braces or glob characters, since they become parts of store keys."""

_DERIVE_LABEL = b"skg tenant token v1\n"
_RELOAD_EVERY = 1.0


class TenantsFileError(ValueError):
    """The tenants file cannot be used."""


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    max_sessions: int = 0  # 0: the service's default (--tenant-max-sessions)
    kernel_memory: int = 0  # 0: the service's default (--kernel-memory-limit)


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def derive_token(key: bytes, tenant: str) -> str:
    """The token of ``tenant`` under ``key``: the hub gives it to the user, the tenants file has its digest."""
    return hmac.new(key, _DERIVE_LABEL + tenant.encode(), hashlib.sha256).hexdigest()


def make_tenants_file(key: bytes, names: Iterable[str]) -> dict[str, str]:
    """The tenants-file content for tenants whose tokens are derived from ``key``."""
    out: dict[str, str] = {}
    for name in names:
        if not TENANT_NAME.match(name):
            raise TenantsFileError(f"tenant name {name!r}: use 1-128 letters, digits or _ . @ + = -")
        out[name] = hashlib.sha256(derive_token(key, name).encode()).hexdigest()
    return out


def _byte_size(value: Any) -> int:
    from pydantic import ByteSize, TypeAdapter, ValidationError

    try:
        return int(TypeAdapter(ByteSize).validate_python(value))
    except ValidationError as exc:
        raise TenantsFileError(f"not a size: {value!r}") from exc


def parse_tenants(data: Any) -> dict[bytes, Tenant]:
    """Digest -> tenant, from the file's JSON (every error names the tenant it is about)."""
    if not isinstance(data, dict):
        raise TenantsFileError("the tenants file must hold a JSON object: {tenant: sha256-hex-of-token}")
    tenants: dict[bytes, Tenant] = {}
    for name, entry in data.items():
        if not TENANT_NAME.match(name):
            raise TenantsFileError(f"tenant name {name!r}: use 1-128 letters, digits or _ . @ + = -")
        spec = entry if isinstance(entry, dict) else {"token_sha256": entry}
        unknown = set(spec) - {"token_sha256", "max_sessions", "kernel_memory"}
        if unknown:
            raise TenantsFileError(f"tenant {name!r}: unknown fields {sorted(unknown)}")
        digest = spec.get("token_sha256")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
            raise TenantsFileError(f"tenant {name!r}: token_sha256 must be 64 hex digits (sha256 of the token)")
        max_sessions = spec.get("max_sessions", 0)
        if not isinstance(max_sessions, int) or max_sessions < 0:
            raise TenantsFileError(f"tenant {name!r}: max_sessions must be a whole number >= 0")
        key = bytes.fromhex(digest)
        if key in tenants:
            raise TenantsFileError(f"tenants {tenants[key].name!r} and {name!r} have the same token")
        tenants[key] = Tenant(name, max_sessions, _byte_size(spec.get("kernel_memory", 0)))
    return tenants


class Tenants:
    """The tenants a replica knows: from the tenants file (re-read when it changes), plus ``--token``."""

    def __init__(self, path: Path | None, token: str, max_sessions: int = 0, kernel_memory: int = 0) -> None:
        self.path = path
        self.max_sessions = max_sessions
        self.kernel_memory = kernel_memory
        self._token = token_digest(token) if token else None
        self._by_digest: dict[bytes, Tenant] = {}
        self._by_name: dict[str, Tenant] = {}
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        if path is not None:
            self._load(initial=True)

    @property
    def enabled(self) -> bool:
        """Every request needs a token (a tenants file or --token)."""
        return self.path is not None or self._token is not None

    def identify(self, token: str) -> Tenant | None:
        """The tenant whose token this is; the digest is compared with every entry, whatever matches."""
        self._refresh()
        digest = token_digest(token)
        found: Tenant | None = None
        if self._token is not None and hmac.compare_digest(digest, self._token):
            found = self.get(DEFAULT_TENANT)
        for known, tenant in self._by_digest.items():
            if hmac.compare_digest(digest, known):
                found = tenant
        return found

    def get(self, name: str) -> Tenant:
        """A tenant's limits, the service's defaults filled in."""
        tenant = self._by_name.get(name, Tenant(name))
        return Tenant(name, tenant.max_sessions or self.max_sessions, tenant.kernel_memory or self.kernel_memory)

    def kernel_memory_of(self, name: str) -> int:
        return self.get(name).kernel_memory

    def _refresh(self) -> None:
        if self.path is None or time.monotonic() - self._checked < _RELOAD_EVERY:
            return
        self._checked = time.monotonic()
        try:
            st = self.path.stat()
        except OSError as exc:
            log.error("tenants file %s: %s (keeping the tenants read before)", self.path, exc)
            return
        if (st.st_mtime_ns, st.st_size) != self._stamp:
            self._load(initial=False)

    def _load(self, initial: bool) -> None:
        assert self.path is not None
        try:
            st = self.path.stat()
            tenants = parse_tenants(json.loads(self.path.read_bytes()))
        except (OSError, ValueError) as exc:
            if initial:
                raise TenantsFileError(f"tenants file {self.path}: {exc}") from exc
            log.error("tenants file %s: %s (keeping the tenants read before)", self.path, exc)
            return
        self._stamp = (st.st_mtime_ns, st.st_size)
        self._checked = time.monotonic()
        self._by_digest = tenants
        self._by_name = {t.name: t for t in tenants.values()}
        log.info("tenants file %s: %d tenants", self.path, len(tenants))


def main(argv: Sequence[str]) -> int:
    """``skg tenants NAME... [-]``: print a tenants file for tenants whose tokens derive from $SKG_TENANT_KEY."""
    key = os.environ.get("SKG_TENANT_KEY", "")
    if len(key) < 16 or not argv:
        print(
            "usage: SKG_TENANT_KEY=<secret, 16+ chars> skg tenants NAME... (or - to read names from stdin)\n"
            "prints the tenants file (JSON) for --tenants-file; each tenant's token is derive_token(key, name)",
            file=sys.stderr,
        )
        return 2
    names = [n for arg in argv for n in (sys.stdin.read().split() if arg == "-" else [arg])]
    try:
        print(json.dumps(make_tenants_file(key.encode(), names), indent=2, sort_keys=True))
    except TenantsFileError as exc:
        print(f"skg tenants: {exc}", file=sys.stderr)
        return 2
    return 0
