"""KnativeSpawner's lifecycle against tests/knative_fake.py, a FAKE Kubernetes/Knative API server.

The fake is an in-process HTTP server, not a cluster: it proves the spawner makes the right API calls with the
real kubernetes_asyncio client over real HTTP and reacts to the statuses Knative reports (Ready after a delay,
Ready=False, deleted behind its back). Whether a real Knative accepts the object is tests/test_hub_objects.py's
job (schema), and a real cluster's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from aiohttp import web
from jupyterhub.objects import Server
from jupyterhub.user import User
from traitlets.config import Config

from hub.knativespawner import KnativeSpawner
from tests.knative_fake import FakeKnativeApi

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
NS = "jhub-users"
GATEWAY = "http://skg-gateway.skg.svc.cluster.local"


@pytest.fixture
async def fake() -> AsyncIterator[FakeKnativeApi]:
    api = FakeKnativeApi()
    await api.start()
    try:
        yield api
    finally:
        await KnativeSpawner.close_clients()
        await api.stop()


def make_spawner(api_url: str, **config: Any) -> KnativeSpawner:
    settings: dict[str, Any] = {
        "k8s_api_host": api_url,
        "namespace": NS,
        "image": "ghcr.io/example/skg-jupyterlab:test",
        "gateway_url": GATEWAY,
        "gateway_token_secret": "skg-secrets",
        "k8s_api_request_timeout": 2,
        "k8s_api_request_retry_timeout": 5,
        "start_timeout": 10,
        "stop_timeout": 5,
        **config,
    }
    spawner = KnativeSpawner(_mock=True, **settings)
    spawner.api_token = "hub-api-token-for-the-user"
    return spawner


VERBS = {"GET": "get", "POST": "create", "PUT": "update", "DELETE": "delete"}


def assert_rbac_allows(requests: list[tuple[str, str]]) -> None:
    """Every call the spawner made is granted by hub/rbac.yaml (validated as Kubernetes objects too)."""
    docs = list(yaml.safe_load_all((ROOT / "hub" / "rbac.yaml").read_text()))
    for doc in docs:
        kubernetes_validate.validate(doc, "1.31", strict=True)
    rules = next(d for d in docs if d["kind"] == "Role")["rules"]
    granted = {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    for method, path in requests:
        parts = path.strip("/").split("/")
        group = "" if parts[0] == "api" else parts[1]
        resource = parts[parts.index("namespaces") + 2]
        assert (group, resource, VERBS[method]) in granted, f"hub/rbac.yaml does not allow {method} {path}"


async def start_with_progress(spawner: KnativeSpawner) -> tuple[str, list[dict[str, Any]]]:
    future = spawner.start()
    events = [event async for event in spawner.progress()]
    return await asyncio.wait_for(future, 15), events


async def test_start_poll_stop(fake: FakeKnativeApi) -> None:
    spawner = make_spawner(fake.url)
    name = spawner.service_name
    url, events = await start_with_progress(spawner)
    assert url == f"http://{name}.{NS}.svc.cluster.local"
    # It waited for Knative: the not-yet-Ready status was seen and reported before Ready.
    messages = [e["message"] for e in events]
    assert any("RevisionMissing" in m for m in messages), messages
    # Progress: ints that never go back, from the creation to Ready.
    assert [e["progress"] for e in events] == sorted(e["progress"] for e in events)
    assert all(isinstance(e["progress"], int) and isinstance(e["message"], str) for e in events)
    assert "created" in " ".join(e["message"] for e in events)
    assert "Ready" in events[-1]["message"]

    created = fake.services[(NS, name)]
    annotations = created["spec"]["template"]["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/min-scale"] == "0"
    assert annotations["autoscaling.knative.dev/max-scale"] == "1"
    env = {e["name"]: e for e in created["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SKG_GATEWAY_URL"]["value"] == GATEWAY
    assert env["JUPYTERHUB_API_TOKEN"]["value"] == "hub-api-token-for-the-user"

    assert await spawner.poll() is None
    await spawner.stop()
    assert (NS, name) not in fake.services
    assert await spawner.poll() == 1

    # Only Knative Services were touched: no pods, no events, no core API (what hub/rbac.yaml grants).
    assert fake.requests
    assert all(path.startswith(f"/apis/serving.knative.dev/v1/namespaces/{NS}/services") for _, path in fake.requests)
    assert {method for method, _ in fake.requests} <= {"GET", "POST", "PUT", "DELETE"}
    assert_rbac_allows(fake.requests)


async def test_route_url_when_configured(fake: FakeKnativeApi) -> None:
    spawner = make_spawner(fake.url, url_source="url")
    url = await asyncio.wait_for(spawner.start(), 15)
    assert url == f"http://{spawner.service_name}.{NS}.example.com"
    await spawner.stop(now=True)


async def test_start_replaces_a_leftover_service(fake: FakeKnativeApi) -> None:
    """A Service left behind (hub lost its state, or a stop crashed) is replaced, not an error."""
    first = make_spawner(fake.url)
    await asyncio.wait_for(first.start(), 15)
    second = make_spawner(fake.url, image="ghcr.io/example/skg-jupyterlab:newer")
    await asyncio.wait_for(second.start(), 15)
    obj = fake.services[(NS, second.service_name)]
    assert obj["metadata"]["generation"] == 2
    assert obj["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":newer")
    assert ("PUT", f"/apis/serving.knative.dev/v1/namespaces/{NS}/services/{second.service_name}") in fake.requests
    assert_rbac_allows(fake.requests)
    await second.stop()


async def test_never_ready_times_out_with_a_clear_error(fake: FakeKnativeApi) -> None:
    fake.ready_delay = None
    spawner = make_spawner(fake.url, ready_timeout=1.5)
    with pytest.raises(TimeoutError) as info:
        await asyncio.wait_for(spawner.start(), 15)
    message = str(info.value)
    assert spawner.service_name in message
    assert "not Ready within 1.5 s" in message
    assert "RevisionMissing" in message  # the last status Knative reported
    await spawner.stop()
    assert not fake.services


async def test_deleted_externally_poll_reports_it(fake: FakeKnativeApi) -> None:
    spawner = make_spawner(fake.url)
    await asyncio.wait_for(spawner.start(), 15)
    assert await spawner.poll() is None
    fake.remove(NS, spawner.service_name)
    assert await spawner.poll() == 1
    await spawner.stop()  # stopping a server that is already gone is fine


async def test_api_outage_is_not_a_dead_server() -> None:
    """poll() must not report a server dead because the API server did not answer once."""
    spawner = make_spawner("http://127.0.0.1:9", k8s_api_request_timeout=1)
    try:
        assert await spawner.poll() is None
    finally:
        await KnativeSpawner.close_clients()


def test_missing_gateway_url_is_refused() -> None:
    async def go() -> None:
        spawner = make_spawner("http://127.0.0.1:9", gateway_url="")
        try:
            with pytest.raises(ValueError, match="gateway_url"):
                await spawner.get_service_manifest_knative()
        finally:
            await KnativeSpawner.close_clients()

    asyncio.run(go())


# ---- named servers, state, the user's volume, hub restarts ---------------------------------------------------


def user(name: str = "alice") -> SimpleNamespace:
    return SimpleNamespace(name=name, id=7, url=f"/user/{name}/")


def named(server_name: str) -> SimpleNamespace:
    """The hub's database row of a named server, as much of it as a Spawner reads."""
    return SimpleNamespace(name=server_name, server=None, state=None)


async def until(check: Any, what: str, timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, f"{what}: not within {timeout:g} s"
        await asyncio.sleep(0.02)


async def test_failed_revision_is_reported_while_waiting(fake: FakeKnativeApi) -> None:
    fake.ready_delay = None
    spawner = make_spawner(fake.url)
    future = spawner.start()
    await until(lambda: (NS, spawner.service_name) in fake.services, "Service created")
    fake.fail(NS, spawner.service_name, message="Back-off pulling image")
    with pytest.raises(RuntimeError, match="RevisionFailed: Back-off pulling image"):
        await asyncio.wait_for(future, 15)
    await spawner.stop()


async def test_named_servers_and_state_survive_a_template_change(fake: FakeKnativeApi) -> None:
    """Each named server is its own Service; the name is in the state, so a hub restarted with another
    pod_name_template still finds (and stops) the Services it started before."""
    default = make_spawner(fake.url, user=user())
    gpu = make_spawner(fake.url, user=user(), orm_spawner=named("gpu"))
    assert default.service_name != gpu.service_name and "gpu" in gpu.service_name
    await asyncio.wait_for(asyncio.gather(default.start(), gpu.start()), 15)
    assert {(NS, default.service_name), (NS, gpu.service_name)} <= set(fake.services)

    state = gpu.get_state()
    assert state["pod_name"] == gpu.service_name and state["namespace"] == NS
    restarted = make_spawner(
        fake.url, user=user(), orm_spawner=named("gpu"), pod_name_template="nb-{username}--{servername}"
    )
    assert restarted.service_name != gpu.service_name
    restarted.load_state(state)
    assert restarted.service_name == gpu.service_name
    assert await restarted.poll() is None
    await restarted.stop()
    assert (NS, gpu.service_name) not in fake.services
    assert (NS, default.service_name) in fake.services, "stopping a named server leaves the default one"
    await default.stop()


STORAGE: dict[str, Any] = {
    "storage_pvc_ensure": True,
    "storage_capacity": "2Gi",
    "pvc_name_template": "claim-{username}{servername}",
    "volumes": [{"name": "home", "persistentVolumeClaim": {"claimName": "{pvc_name}"}}],
    "volume_mounts": [{"name": "home", "mountPath": "/home/jovyan"}],
}


async def test_home_volume_is_made_once_mounted_and_kept(fake: FakeKnativeApi) -> None:
    spawner = make_spawner(fake.url, user=user(), **STORAGE)
    claim = spawner.pvc_name
    _, events = await start_with_progress(spawner)
    assert (NS, claim) in fake.claims
    assert fake.claims[(NS, claim)]["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert any(f"Created PersistentVolumeClaim {claim}" in e["message"] for e in events)
    revision = fake.services[(NS, spawner.service_name)]["spec"]["template"]["spec"]
    assert revision["volumes"] == [{"name": "home", "persistentVolumeClaim": {"claimName": claim}}]
    assert {"name": "home", "mountPath": "/home/jovyan"} in revision["containers"][0]["volumeMounts"]
    assert spawner.get_state()["pvc_name"] == claim
    await spawner.stop()
    assert (NS, claim) in fake.claims, "stopping (and scaling to zero) keeps the user's files"

    # A later start (a new hub process: state loaded) finds the claim instead of failing on it.
    again = make_spawner(fake.url, user=user(), **STORAGE)
    again.load_state(spawner.get_state())
    await asyncio.wait_for(again.start(), 15)
    assert [p for m, p in fake.requests if m == "POST" and "persistentvolumeclaims" in p] == [
        f"/api/v1/namespaces/{NS}/persistentvolumeclaims"
    ]
    await again.stop()

    # A named server whose claim is the default server's does not delete it with itself...
    shared = make_spawner(
        fake.url, user=user(), orm_spawner=named("gpu"), **{**STORAGE, "pvc_name_template": "claim-{username}"}
    )
    fake.claims[(NS, shared.pvc_name)] = {"metadata": {"name": shared.pvc_name}}
    await shared.delete_forever()
    assert (NS, shared.pvc_name) in fake.claims
    # ...and deleting the user deletes the claim, as KubeSpawner does.
    await again.delete_forever()
    assert (NS, claim) not in fake.claims
    assert all(p.startswith(("/apis/serving.knative.dev/", "/api/v1/namespaces/")) for _, p in fake.requests)
    assert_rbac_allows(fake.requests)


@pytest.fixture
async def user_server() -> AsyncIterator[tuple[str, list[str]]]:
    """A stand-in for the user's server behind Knative: answers {base_url}api and records each request (each
    request to a Knative Service scaled to zero would start a pod)."""
    seen: list[str] = []

    async def api(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.json_response({"version": "2"}, headers={"X-JupyterHub-Version": "5.3.0"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", api)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", seen
    finally:
        await runner.cleanup()


async def test_hub_restart_does_not_wake_a_server(fake: FakeKnativeApi, user_server: tuple[str, list[str]]) -> None:
    """JupyterHub's start-up check of a running server (poll, then ``User._wait_up``, an HTTP request) is run
    as JupyterHub runs it: the Service is Ready per Knative, so no request reaches the server."""
    address, seen = user_server
    fake.address = address
    first = make_spawner(fake.url, user=user())
    url = await asyncio.wait_for(first.start(), 15)
    assert url == address

    # A new hub process: a spawner from the saved state, with the server JupyterHub had in its database.
    spawner = make_spawner(fake.url, user=user())
    spawner.load_state(first.get_state())
    spawner.server = Server.from_url(url + "/user/alice/")
    hub_user = SimpleNamespace(settings={}, log=logging.getLogger("test"), name="alice")
    spawner._check_pending = True  # what JupyterHub's init_spawners sets around the check
    assert await spawner.poll() is None
    await User._wait_up(hub_user, spawner)
    spawner._check_pending = False
    assert seen == [], "the start-up check must not reach a server that may be scaled to zero"

    # Negative control: the same call outside the start-up check is the real HTTP check.
    await User._wait_up(hub_user, spawner)
    assert seen == ["/user/alice/api"]
    await spawner.stop()


# ---- the Zero to JupyterHub values ----------------------------------------------------------------------------


def z2jh_values() -> tuple[dict[str, Any], dict[str, Any]]:
    base = yaml.safe_load((ROOT / "hub" / "z2jh" / "values-kubespawner.yaml").read_text())
    knative = yaml.safe_load((ROOT / "hub" / "z2jh" / "values-knativespawner.yaml").read_text())
    return base, knative


def spawner_from_values(api_url: str, monkeypatch: pytest.MonkeyPatch) -> KnativeSpawner:
    """A KnativeSpawner configured as the chart's jupyterhub_config.py configures it from both values files:
    singleuser.cmd/image/storage, hub.config (traitlets config by class) and hub.extraConfig (run as is)."""
    base, knative = z2jh_values()
    c = Config()
    singleuser = base["singleuser"]
    c.Spawner.cmd = singleuser["cmd"]
    c.KubeSpawner.image = f"{singleuser['image']['name']}:{singleuser['image']['tag']}"
    c.KubeSpawner.cpu_guarantee, c.KubeSpawner.cpu_limit = singleuser["cpu"]["guarantee"], singleuser["cpu"]["limit"]
    c.KubeSpawner.mem_guarantee = singleuser["memory"]["guarantee"]
    c.KubeSpawner.mem_limit = singleuser["memory"]["limit"]
    c.KubeSpawner.fs_gid = 100  # the chart's default singleuser.fsGid
    c.KubeSpawner.storage_pvc_ensure = singleuser["storage"]["type"] == "dynamic"
    c.KubeSpawner.volumes = [{"name": "volume-{user_server}", "persistentVolumeClaim": {"claimName": "{pvc_name}"}}]
    c.KubeSpawner.volume_mounts = [{"name": "volume-{user_server}", "mountPath": "/home/jovyan"}]
    for section, values in knative["hub"]["config"].items():
        c[section].update(values)
    monkeypatch.setenv("SKG_GATEWAY_URL", knative["hub"]["extraEnv"]["SKG_GATEWAY_URL"])
    exec(knative["hub"]["extraConfig"]["knativespawner"], {"c": c})
    return KnativeSpawner(_mock=True, config=c, user=user(), k8s_api_host=api_url, namespace=NS)


async def test_z2jh_values_apply(fake: FakeKnativeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    spawner = spawner_from_values(fake.url, monkeypatch)
    spawner.api_token = "hub-token"
    svc = await spawner.get_service_manifest_knative()
    revision = svc["spec"]["template"]["spec"]
    # The pod securityContext (the chart's fsGid: the user can write to the home volume) is what the
    # securitycontext flag lets in; the rest is what a Knative with the documented flags accepts.
    assert revision.pop("securityContext") == {"fsGroup": 100}
    jsonschema.validate(svc, json.loads((ROOT / "knative" / "schema" / "knative-service.schema.json").read_text()))
    assert [v["persistentVolumeClaim"]["claimName"] for v in revision["volumes"]] == [spawner.pvc_name]

    # singleuser.cmd reaches the image's entrypoint (the start script) as arguments: the server runs once,
    # with hub.config.KubeSpawner.args after it.
    args = revision["containers"][0]["args"]
    assert args[0] == "jupyterhub-singleuser"
    env = {"SKG_GATEWAY_URL": spawner.gateway_url, "JUPYTERHUB_API_TOKEN": "hub", "PATH": os.environ["PATH"]}
    proc = await asyncio.to_thread(
        subprocess.run,
        ["bash", str(ROOT / "docker" / "start-jupyterlab.sh"), "--print-command", *args],
        env=env, capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    cmd = shlex.split(proc.stdout)
    assert cmd.count("jupyterhub-singleuser") == 1 and cmd[0] == "jupyterhub-singleuser"
    assert "--ServerApp.allow_origin=https://jupyter.example.com" in cmd


def test_z2jh_network_policies_and_host() -> None:
    base, knative = z2jh_values()
    # User pods reach the gateway: Knative's cluster-local ingress, or the baseline's pods on 8080.
    egress = base["singleuser"]["networkPolicy"]["egress"]
    destinations = [peer for rule in egress for peer in rule["to"]]
    namespaces = {p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in destinations}
    assert {"kourier-system", "skg-baseline"} <= namespaces
    assert "egress" not in knative["singleuser"]["networkPolicy"], "Helm would replace the baseline's list"
    # Knative's activator and ingress reach the user's queue-proxy (8012): the chart allows only hub and proxy.
    ingress = knative["singleuser"]["networkPolicy"]["ingress"]
    sources = {p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for r in ingress for p in r["from"]}
    assert {"knative-serving", "kourier-system"} <= sources
    assert {8012, 9090} <= {p["port"] for r in ingress for p in r["ports"]}
    # The proxy sends the Knative host; the hub reads the browser's from X-Forwarded-Host.
    assert "--change-origin" in knative["proxy"]["chp"]["extraCommandLineFlags"]
    assert knative["hub"]["config"]["JupyterHub"]["forwarded_host_header"] == "X-Forwarded-Host"
