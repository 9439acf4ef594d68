"""A replica's own bounds, against a real service on loopback without a token: what a web page may not do
(Host and Origin checks), how many sessions it serves, how long headers may take, how many connections."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets
from websockets.asyncio.client import connect

from tests.conftest import TOKEN
from tests.service import Service, running_service


@pytest.fixture(scope="module")
def open_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    args = ["--pool-size", "1", "--max-sessions", "1", "--header-timeout", "2", "--limit-concurrency", "6",
            "--allowed-origins", '["http://notebooks.example:8000"]']  # fmt: skip
    with running_service(tmp_path_factory.mktemp("open"), args) as svc:
        yield svc


def test_a_page_under_another_host_name_is_refused(open_gateway: Service) -> None:
    port = open_gateway.url.rsplit(":", 1)[1]
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.nip.io:{port}"):
        r = httpx.get(f"{open_gateway.url}/api/kernels", headers={"Host": host})
        assert r.status_code == 403 and "host" in r.json()["message"], host
    assert httpx.get(f"{open_gateway.url}/readyz", headers={"Host": "evil.example"}).status_code in (200, 503)
    assert httpx.get(f"{open_gateway.url}/api/kernels", headers={"Host": f"localhost:{port}"}).status_code == 200


async def test_a_cross_site_page_cannot_open_a_kernel_socket(open_gateway: Service) -> None:
    kid = httpx.post(f"{open_gateway.url}/api/kernels", json={}, timeout=120).json()["id"]
    try:
        url = f"{open_gateway.ws_url}/api/kernels/{kid}/channels"
        for origin in ("http://evil.example", "null", "https://127.0.0.1.evil.example"):
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with connect(url, origin=origin):  # type: ignore[arg-type]
                    pass
            assert refused.value.response.status_code == 403, origin
        refused_post = httpx.post(f"{open_gateway.url}/execute", json={"code": "1"},
                                  headers={"Origin": "http://evil.example"})  # fmt: skip
        assert refused_post.status_code == 403
        for origin in (None, "http://localhost:3000", "http://notebooks.example:8000"):
            async with connect(url, origin=origin) as ws:  # type: ignore[arg-type]
                assert ws.state.name == "OPEN"

        # One session per replica: the next one is 503 + Retry-After, so the platform sends it elsewhere.
        full = httpx.post(f"{open_gateway.url}/execute", json={"code": "1"}, timeout=60)
        assert full.status_code == 503 and full.headers["Retry-After"] and "limit of 1" in full.json()["message"]
    finally:
        httpx.delete(f"{open_gateway.url}/api/kernels/{kid}", timeout=60)


def _closed_by_server(sock: socket.socket, deadline: float) -> bool:
    sock.settimeout(1.0)
    while time.monotonic() < deadline:
        try:
            if sock.recv(1024) == b"":
                return True
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True
    return False


def test_headers_that_never_end_are_cut_off(open_gateway: Service) -> None:
    host, port = open_gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as idle, socket.create_connection((host, int(port))) as slow:
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        deadline = time.monotonic() + 60
        assert _closed_by_server(idle, deadline) and _closed_by_server(slow, deadline)
    assert httpx.get(f"{open_gateway.url}/healthz").status_code == 200


def test_connections_past_the_limit_are_refused(tmp_path: Path) -> None:
    with running_service(tmp_path, ["--pool-size", "0", "--limit-concurrency", "3"], token=TOKEN) as svc:
        host, port = svc.url.removeprefix("http://").split(":")
        held = [socket.create_connection((host, int(port))) for _ in range(3)]
        try:
            assert httpx.get(f"{svc.url}/healthz").status_code == 503
        finally:
            for sock in held:
                sock.close()
        deadline = time.monotonic() + 60
        while httpx.get(f"{svc.url}/healthz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
