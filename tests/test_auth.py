"""Token authentication: every endpoint but the probes, WebSocket included."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets
from websockets.asyncio.client import connect

from tests.conftest import TOKEN
from tests.service import Service, running_service

PROTECTED = [
    ("GET", "/api"),
    ("GET", "/api/kernelspecs"),
    ("GET", "/api/kernels"),
    ("POST", "/api/kernels"),
    ("GET", "/sessions"),
    ("POST", "/execute"),
    ("POST", "/execute/stream"),
    ("GET", "/metrics"),
    ("GET", "/kernelspecs/python3/logo-64x64.png"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize("auth", [None, "token wrong", "Bearer wrong", "token", f"Basic {TOKEN}"])
def test_protected_endpoints_need_the_token(service: Service, method: str, path: str, auth: str | None) -> None:
    headers = {"Authorization": auth} if auth is not None else {}
    r = httpx.request(method, service.url + path, headers=headers, json={"code": "1"})
    assert r.status_code == 401
    assert r.json()["reason"] == "Unauthorized"
    assert "token" in r.json()["message"]


@pytest.mark.parametrize("scheme", ["token", "Bearer", "bearer"])
def test_token_and_bearer_schemes_accepted(service: Service, scheme: str) -> None:
    r = httpx.get(service.url + "/api/kernels", headers={"Authorization": f"{scheme} {TOKEN}"})
    assert r.status_code == 200


def test_probes_need_no_token(service: Service) -> None:
    assert httpx.get(service.url + "/healthz").status_code == 200
    assert httpx.get(service.url + "/readyz").status_code == 200


async def test_websocket_needs_the_token(service: Service) -> None:
    kid = httpx.post(service.url + "/api/kernels", headers=service.headers).json()["id"]
    url = f"{service.ws_url}/api/kernels/{kid}/channels"
    with pytest.raises(websockets.InvalidStatus) as info:
        async with connect(url):
            pass
    assert info.value.response.status_code == 401
    with pytest.raises(websockets.InvalidStatus):
        async with connect(url, additional_headers={"Authorization": "token nope"}):
            pass
    async with connect(url + f"?token={TOKEN}") as ws:
        assert ws.state.name == "OPEN"
    httpx.delete(f"{service.url}/api/kernels/{kid}", headers=service.headers)


@pytest.fixture(scope="module")
def open_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with running_service(tmp_path_factory.mktemp("open"), ["--pool-size", "1"]) as svc:
        yield svc


def test_no_token_on_loopback_accepts_gateway_clients_empty_token(open_service: Service) -> None:
    # jupyter_server's GatewayClient sends "Authorization: token " when no gateway token is configured.
    r = httpx.get(open_service.url + "/api/kernels", headers={"Authorization": "token"})
    assert r.status_code == 200
    assert r.json() == [] or isinstance(r.json(), list)
    assert httpx.get(open_service.url + "/api/kernels").status_code == 200


def test_refuses_non_loopback_bind_without_token(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kernel_gateway", "--host", "0.0.0.0", "--port", "0", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2
    assert "without a token" in proc.stderr


def test_invalid_settings_are_reported(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kernel_gateway", "--pool-size", "-3", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "pool_size" in proc.stderr
