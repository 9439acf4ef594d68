"""Tenants against real service processes: a session exists only for the tenant whose token created it, on
every face and on every replica; each tenant's sessions and kernel memory are capped; an owner address in the
store that is not a replica's is never contacted."""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import websockets
from websockets.asyncio.client import connect

from tests.jupyter_ws import run_cell
from tests.redis_server import redis_server
from tests.service import Service, running_service, start_service
from tests.test_replicas import SIGNING_KEY

ALICE, BOB, CAROL, OPERATOR = "alice-token-1", "bob-token-2", "carol-token-3", "operator-token-0"


def http(method: str, url: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, url, timeout=120, **kw)  # a cold kernel start may take a while on a busy machine


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def write_tenants(path: Path, **extra: Any) -> Path:
    tenants = {
        "alice": digest(ALICE),
        "bob": {"token_sha256": digest(BOB), "max_sessions": 2, "kernel_memory": "1500MiB"},
        **extra,
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(tenants))
    tmp.replace(path)  # as a Secret update is: the file is swapped, never half-written
    return path


def as_(token: str | None) -> dict[str, str]:
    return {"Authorization": f"token {token}"} if token else {}


def execute(svc: Service, token: str, code: str, session: str | None = None) -> httpx.Response:
    body = {"code": code, **({"session": session} if session else {})}
    return http("POST", f"{svc.url}/execute", json=body, headers=as_(token))


def value(reply: dict[str, Any]) -> str:
    return str(next(o for o in reply["outputs"] if o["output_type"] == "execute_result")["data"]["text/plain"])


@pytest.fixture(scope="module")
def tenants_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tenants(tmp_path_factory.mktemp("tenants") / "tenants.json")


@pytest.fixture(scope="module")
def gateway(tenants_file: Path) -> Iterator[Service]:
    args = ["--pool-size", "1", "--tenants-file", str(tenants_file)]
    with running_service(tenants_file.parent, args, token=OPERATOR) as svc:
        yield svc


def test_every_request_needs_a_tenants_token_on_loopback_too(gateway: Service) -> None:
    for headers in ({}, as_("nope"), {"Authorization": "token"}, as_(digest(ALICE))):
        r = http("GET", f"{gateway.url}/api/kernels", headers=headers)
        assert r.status_code == 401 and r.json()["reason"] == "Unauthorized"
    for token in (ALICE, BOB, OPERATOR):
        assert http("GET", f"{gateway.url}/api/kernels", headers=as_(token)).status_code == 200


async def test_another_tenants_session_does_not_exist_on_any_face(gateway: Service) -> None:
    url = gateway.url
    sid = execute(gateway, ALICE, "secret = 'alice only'").json()["session"]
    kid = http("POST", f"{url}/api/kernels", json={}, headers=as_(ALICE)).json()["id"]
    for other in (BOB, OPERATOR):
        h = as_(other)
        for method, path, body in (
            ("GET", f"/sessions/{sid}", None),
            ("GET", f"/api/kernels/{kid}", None),
            ("POST", "/execute", {"code": "secret", "session": sid}),
            ("POST", "/execute/stream", {"code": "secret", "session": sid}),
            ("POST", f"/sessions/{sid}/checkpoint", None),
            ("POST", f"/api/kernels/{kid}/interrupt", None),
            ("POST", f"/api/kernels/{kid}/restart", None),
            ("DELETE", f"/api/kernels/{kid}", None),
            ("DELETE", f"/sessions/{sid}", None),
        ):
            r = http(method, url + path, json=body, headers=h)
            assert r.status_code == 404, (other, method, path, r.text)
            assert "does not exist" in r.json()["message"]
        listed = {s["id"] for s in http("GET", f"{url}/sessions", headers=h).json()}
        listed |= {k["id"] for k in http("GET", f"{url}/api/kernels", headers=h).json()}
        assert not listed & {sid, kid}
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with connect(f"{gateway.ws_url}/api/kernels/{kid}/channels", additional_headers=h):
                pass
        assert refused.value.response.status_code == 404
    # The owner saw none of it: its kernels were neither restarted nor deleted.
    assert value(execute(gateway, ALICE, "secret", sid).json()) == "'alice only'"
    assert {sid, kid} <= {s["id"] for s in http("GET", f"{url}/sessions", headers=as_(ALICE)).json()}
    async with connect(f"{gateway.ws_url}/api/kernels/{kid}/channels", additional_headers=as_(ALICE)) as ws:
        assert (await run_cell(ws, "6 * 7")).reply["content"]["status"] == "ok"


def test_a_tenant_has_at_most_its_sessions(gateway: Service) -> None:
    h = as_(BOB)
    made = [http("POST", f"{gateway.url}/sessions", json={}, headers=h) for _ in range(2)]
    assert [r.status_code for r in made] == [201, 201]
    for path, body in (("/sessions", {}), ("/api/kernels", {}), ("/execute", {"code": "1"})):
        r = http("POST", gateway.url + path, json=body, headers=h)
        assert r.status_code == 429 and "limit of 2 sessions" in r.json()["message"]
    assert execute(gateway, ALICE, "1").status_code == 200  # another tenant's cap is its own
    assert http("DELETE", f"{gateway.url}/sessions/{made[0].json()['id']}", headers=h).status_code == 204
    assert http("POST", f"{gateway.url}/sessions", json={}, headers=h).status_code == 201


def test_a_kernel_over_its_tenants_memory_limit_comes_back_from_its_checkpoint(gateway: Service) -> None:
    for s in http("GET", f"{gateway.url}/sessions", headers=as_(BOB)).json():
        http("DELETE", f"{gateway.url}/sessions/{s['id']}", headers=as_(BOB))
    sid = execute(gateway, BOB, "kept = 41").json()["session"]
    blown = execute(gateway, BOB, "hog = bytearray(2 * 1024**3)", sid).json()  # over bob's 1500 MiB
    assert blown["status"] == "error" and blown["error"]["ename"] == "MemoryLimitExceeded"
    assert "1500 MiB" in blown["error"]["evalue"] and blown["kernel_restarted"] is True
    assert any("restored" in n for n in blown["notices"]), blown
    assert blown["restored"]["restored"] == ["kept"]
    after = execute(gateway, BOB, "(kept + 1, 'hog' in dir())", sid).json()
    assert value(after) == "(42, False)"
    # alice has no limit of her own: the same allocation is fine for her (not kept: no 2 GiB checkpoint).
    assert execute(gateway, ALICE, "len(bytearray(2 * 1024**3))").json()["status"] == "ok"


def test_the_tenants_file_is_read_again_when_it_changes(gateway: Service, tenants_file: Path) -> None:
    assert http("GET", f"{gateway.url}/sessions", headers=as_(CAROL)).status_code == 401
    write_tenants(tenants_file, carol=digest(CAROL))
    deadline = time.monotonic() + 30
    while http("GET", f"{gateway.url}/sessions", headers=as_(CAROL)).status_code != 200:
        assert time.monotonic() < deadline, "the new tenant was never admitted"
        time.sleep(0.2)


# -- across replicas -------------------------------------------------------------------------------------


def replica(tmp_path: Path, redis_url: str, name: str, tenants: Path) -> Service:
    env = {"SKG_REDIS_URL": redis_url, "SKG_SIGNING_KEY": SIGNING_KEY}
    args = ["--pool-size", "1", "--lease-ttl", "30", "--tenants-file", str(tenants), "--peer-cidr", "127.0.0.1/32"]
    return start_service(tmp_path / name, args, env=env)


async def test_tenants_hold_across_replicas_and_owner_addresses_are_checked(tmp_path: Path) -> None:
    tenants = write_tenants(tmp_path / "tenants.json")
    with redis_server(tmp_path / "redis") as srv:
        a, b = replica(tmp_path, srv.url, "a", tenants), replica(tmp_path, srv.url, "b", tenants)
        try:
            sid = execute(a, ALICE, "x = 'on a'").json()["session"]
            # Through B: bob gets nothing (B does not even forward), alice reaches her session on A.
            assert execute(b, BOB, "x", sid).status_code == 404
            assert http("GET", f"{b.url}/sessions/{sid}", headers=as_(BOB)).status_code == 404
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with connect(f"{b.ws_url}/api/kernels/{sid}/channels", additional_headers=as_(BOB)):
                    pass
            assert refused.value.response.status_code == 404
            assert value(execute(b, ALICE, "x", sid).json()) == "'on a'"
            async with connect(f"{b.ws_url}/api/kernels/{sid}/channels", additional_headers=as_(ALICE)) as ws:
                result = await run_cell(ws, "x")
                assert result.of_type("execute_result")[0]["content"]["data"]["text/plain"] == "'on a'"
            assert sid in {s["id"] for s in http("GET", f"{b.url}/sessions", headers=as_(ALICE)).json()}
            assert sid not in {s["id"] for s in http("GET", f"{b.url}/sessions", headers=as_(BOB)).json()}

            # Whoever writes to the store names an address that is no replica's: B must not go there.
            trap = socket.socket()
            trap.bind(("127.0.0.2", 0))
            trap.listen(8)
            trap.setblocking(False)
            a.stop(signal.SIGKILL)
            store = redis.Redis.from_url(srv.url)
            lease = f"skg:{{{sid}}}:lease"
            store.hset(lease, "url", f"http://127.0.0.2:{trap.getsockname()[1]}")
            store.pexpire(lease, 60_000)  # a live lease: B would forward rather than take over
            for _ in range(2):
                r = execute(b, ALICE, "x", sid)
                assert r.status_code == 502 and "not a replica address" in r.json()["message"], r.text
            with pytest.raises(BlockingIOError):
                trap.accept()  # nobody ever connected
            trap.close()
        finally:
            for svc in (a, b):
                svc.stop(signal.SIGKILL)


async def test_each_hub_user_gets_a_gateway_token_of_their_own(tmp_path: Path) -> None:
    from hub.knativespawner import KnativeSpawner
    from kernel_gateway.tenants import Tenants, make_tenants_file

    key = "hub-and-gateway-share-this-key"
    tokens: dict[str, str] = {}
    try:
        for name in ("ada", "bo@example.org"):
            spawner = KnativeSpawner(_mock=True, gateway_url="http://gw", namespace="users", k8s_api_host="http://127.0.0.1:1",
                                     gateway_tenant_key=key)  # fmt: skip
            spawner.user.name = name
            env = {e["name"]: e.get("value") for e in spawner._gateway().env()}
            assert env["SKG_GATEWAY_TOKEN"] == env["JUPYTER_GATEWAY_AUTH_TOKEN"]
            tokens[name] = env["JUPYTER_GATEWAY_AUTH_TOKEN"]
    finally:
        await KnativeSpawner.close_clients()
    assert len(set(tokens.values())) == 2
    path = tmp_path / "tenants.json"
    path.write_text(json.dumps(make_tenants_file(key.encode(), tokens)))  # what `skg tenants` writes
    registry = Tenants(path, "")
    assert {name: registry.identify(token).name for name, token in tokens.items()} == {n: n for n in tokens}  # type: ignore[union-attr]
