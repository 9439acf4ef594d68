"""The inter-replica credential as data: what verifies, and every way a claim must fail."""

from __future__ import annotations

import time

import pytest

from kernel_gateway.peers import PEER_HEADER, PeerAuth, PeerClaim, derive_key

KEY = b"0123456789abcdef0123456789abcdef"


def pair() -> tuple[PeerAuth, PeerAuth]:
    return PeerAuth.from_signing_key(KEY, "a"), PeerAuth.from_signing_key(KEY, "b")


def test_a_claim_verifies_once_with_its_sender_tenant_and_target() -> None:
    a, b = pair()
    headers = a.headers("POST", "/execute", "acme", to="b")
    assert b.verify("post", "/execute", headers) == PeerClaim("a", "acme", "b")
    assert b.verify("POST", "/execute", headers) is None  # the nonce was used: a replay is no claim


def test_a_claim_is_bound_to_its_request_and_key() -> None:
    a, b = pair()
    assert b.verify("POST", "/sessions", a.headers("POST", "/execute", None)) is None
    assert b.verify("GET", "/execute", a.headers("POST", "/execute", None)) is None
    other = PeerAuth.from_signing_key(b"another key of 32 bytes, really", "c")
    assert b.verify("POST", "/execute", other.headers("POST", "/execute", None)) is None


def test_the_peer_key_is_not_the_signing_key() -> None:
    assert derive_key(KEY) != KEY and len(derive_key(KEY)) == 32


@pytest.mark.parametrize(
    "value",
    ["", "v1", "v1..", "v2.e30.00", "v1.!!!.00", "v1.e30.0" + "0" * 63, "garbage"],
)
def test_malformed_claims_are_no_claims(value: str) -> None:
    _, b = pair()
    assert b.verify("POST", "/execute", {PEER_HEADER: value}) is None


def test_a_tampered_payload_fails_its_mac() -> None:
    a, b = pair()
    version, _, mac = a.headers("POST", "/execute", "acme")[PEER_HEADER].split(".")
    forged = PeerAuth.from_signing_key(KEY, "a").headers("POST", "/execute", "root")[PEER_HEADER].split(".")[1]
    assert b.verify("POST", "/execute", {PEER_HEADER: f"{version}.{forged}.{mac}"}) is None


def test_an_old_claim_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = pair()
    headers = a.headers("POST", "/execute", None)
    later = time.time() + 10 * b.max_skew
    monkeypatch.setattr(time, "time", lambda: later)
    assert b.verify("POST", "/execute", headers) is None
