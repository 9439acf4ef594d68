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

KEY_BYTES = 32


class VerificationError(Exception):
    """A checkpoint's signature does not match its bytes: it is refused, never loaded."""


class Signer:
    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("a signing key must be at least 16 bytes")
        self._key = key

    def sign(self, session_id: str, data: bytes | list[bytes]) -> str:
        mac = hmac.new(self._key, session_id.encode() + b"\0", hashlib.sha256)
        for chunk in [data] if isinstance(data, bytes) else data:
            mac.update(chunk)
        return mac.hexdigest()

    def verify(self, session_id: str, data: bytes | list[bytes], signature: str, what: str) -> None:
        if not hmac.compare_digest(self.sign(session_id, data), signature):
            raise VerificationError(f"{what} of session {session_id!r} failed signature verification")


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
