"""The inter-replica HTTP client (forward.http_client): its TLS context is made at the first forward, not at
the replica's start (a cold start forwards nothing), and it forwards as httpx's own transport does."""

from __future__ import annotations

import asyncio

from kernel_gateway.forward import LazyTransport, http_client
from kernel_gateway.settings import Settings


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
    await writer.drain()
    writer.close()


def test_the_transport_is_made_at_the_first_forward_and_forwards() -> None:
    async def scenario() -> tuple[bool, int, str, bool]:
        server = await asyncio.start_server(_answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = http_client(Settings())
        transport = client._transport
        assert isinstance(transport, LazyTransport)
        before = transport.transport is None
        try:
            response = await client.get(f"http://127.0.0.1:{port}/")
        finally:
            await client.aclose()
            server.close()
            await server.wait_closed()
        return before, response.status_code, response.text, transport.transport is not None

    assert asyncio.run(scenario()) == (True, 200, "ok", True)
