"""HMAC signatures on checkpoints: made by the service, verified before anything is loaded into a kernel.

Signatures bind the bytes to the session id, so a checkpoint cannot be moved from one session to another.
The key lives only in the service process; kernels never see it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Any

KEY_BYTES = 32

_PREFIXES = 4096
"""Sessions whose keyed, id-prefixed HMAC state is kept (a few hundred bytes each); past that, started again."""


class VerificationError(Exception):
    """A checkpoint's signature does not match its bytes: it is refused, never loaded."""


class Signer:
    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("a signing key must be at least 16 bytes")
        self._key = key
        self._keyed = _keyed(key)
        self._prefixed: dict[str, Any] = {}

    def sign(self, session_id: str, data: bytes | list[bytes]) -> str:
        # HMAC(key, session id + NUL + data), from a state that has the key and the session's prefix in it
        # already: a copy and two C calls per signature instead of keying a new HMAC through hmac.py's Python.
        start = self._prefixed.get(session_id)
        if start is None:
            start = self._keyed.copy()
            start.update(session_id.encode() + b"\0")
            if len(self._prefixed) >= _PREFIXES:
                self._prefixed.clear()
            self._prefixed[session_id] = start
        mac = start.copy()
        if isinstance(data, bytes):
            mac.update(data)
        else:
            for chunk in data:
                mac.update(chunk)
        digest: str = mac.hexdigest()
        return digest

    def verify(self, session_id: str, data: bytes | list[bytes], signature: str, what: str) -> None:
        if not hmac.compare_digest(self.sign(session_id, data), signature):
            raise VerificationError(f"{what} of session {session_id!r} failed signature verification")


def _keyed(key: bytes) -> Any:
    """An HMAC-SHA256 state with ``key`` in it: OpenSSL's own object where hmac.HMAC wraps one (its copy and
    update are C), else the HMAC itself. Copies of it are independent; copying is safe from any thread."""
    mac = hmac.new(key, digestmod=hashlib.sha256)
    return getattr(mac, "_hmac", None) or mac


def load_or_create_key(path: Path) -> bytes:
    """The embedded store's key: made once, kept beside the data with owner-only permissions."""
    if path.exists():
        return bytes.fromhex(path.read_text().strip())
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(KEY_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex())
    return key
