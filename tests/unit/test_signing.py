"""Checkpoint signatures: HMAC-SHA256 of the session id, a NUL and the bytes, however the signer keeps its state."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from notebook_state import signing
from notebook_state.signing import Signer, VerificationError

KEY = bytes(range(32))


def reference(session_id: str, parts: list[bytes]) -> str:
    return hmac.new(KEY, session_id.encode() + b"\0" + b"".join(parts), hashlib.sha256).hexdigest()


@pytest.mark.parametrize("data", [b"", b"x" * 100, [b"a", b"", b"bc"], b"y" * 300_000])
def test_a_signature_is_the_documented_hmac(data: bytes | list[bytes]) -> None:
    signer = Signer(KEY)
    parts = [data] if isinstance(data, bytes) else data
    for session_id in ("s-1", "s-2", "s-1"):  # the second time from the session's kept state
        assert signer.sign(session_id, data) == reference(session_id, parts)


def test_signatures_stay_right_past_the_sessions_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signing, "_PREFIXES", 3)
    signer = Signer(KEY)
    ids = [f"s-{i}" for i in range(10)]
    for _ in range(2):
        for session_id in ids:
            assert signer.sign(session_id, b"cell") == reference(session_id, [b"cell"])


def test_a_signature_binds_the_bytes_and_the_session() -> None:
    signer = Signer(KEY)
    sig = signer.sign("s-1", b"manifest")
    signer.verify("s-1", b"manifest", sig, "manifest")
    with pytest.raises(VerificationError):
        signer.verify("s-2", b"manifest", sig, "manifest")
    with pytest.raises(VerificationError):
        signer.verify("s-1", b"manifesT", sig, "manifest")
    assert Signer(bytes(32)).sign("s-1", b"manifest") != sig
