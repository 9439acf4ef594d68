"""The Redis store's connections pack commands with hiredis: the bytes on the wire are redis-py's own."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import DataError

from notebook_state.store.redis_client import connect, packing_in_c

ARG = st.one_of(
    st.text(),
    st.binary(),
    st.integers(),
    st.floats(allow_nan=False),
)
NAMES = st.sampled_from(["EVALSHA", b"SET", "SCRIPT LOAD", b"CLIENT SETNAME", "get"])


def _ours() -> Any:
    """A connection as the store's client makes them (not connected: packing needs no server)."""
    return packing_in_c(aioredis.Redis()).connection_pool.make_connection()  # type: ignore[no-untyped-call]


@given(NAMES, st.lists(ARG, max_size=24))
def test_packed_commands_are_byte_for_byte_redis_pys(name: Any, args: list[Any]) -> None:
    ours = _ours()
    assert type(ours) is not Connection  # the store's own subclass
    assert b"".join(ours.pack_command(name, *args)) == b"".join(Connection().pack_command(name, *args))


def test_a_memoryview_argument_keeps_redis_pys_packer() -> None:
    big = memoryview(b"x" * 100_000)
    ours = _ours()
    chunks = ours.pack_command("RPUSH", "k", big)
    assert any(chunk is big for chunk in chunks)  # sent as it is, not copied into one bytes
    assert b"".join(chunks) == b"".join(Connection().pack_command("RPUSH", "k", big))


def test_an_argument_redis_cannot_take_is_a_data_error_as_before() -> None:
    ours = _ours()
    bads: list[Any] = [True, None, {"a": 1}]
    for bad in bads:
        with pytest.raises(DataError):
            ours.pack_command("SET", "k", bad)
        with pytest.raises(DataError):
            Connection().pack_command("SET", "k", bad)


@pytest.mark.parametrize(
    ("url", "cls"),
    [
        ("redis://127.0.0.1:1/0", Connection),
        ("rediss://127.0.0.1:1/0", SSLConnection),
        ("unix:///tmp/nowhere.sock", UnixDomainSocketConnection),
    ],
)
def test_every_scheme_gets_its_own_connection_class_packing_in_c(url: str, cls: type[Connection]) -> None:
    client = connect(url, None, cluster=False, timeout=1.0)
    made = client.redis.connection_pool.connection_class
    assert issubclass(made, cls) and made is not cls
