"""KnativeSpawner's lifecycle against tests/knative_fake.py, a FAKE Kubernetes/Knative API server.

The fake is an in-process HTTP server, not a cluster: it proves the spawner makes the right API calls with the
real kubernetes_asyncio client over real HTTP and reacts to the statuses Knative reports (Ready after a delay,
Ready=False, deleted behind its back). Whether a real Knative accepts the object is tests/test_hub_objects.py's
job (schema), and a real cluster's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from hub.knativespawner import KnativeSpawner
from tests.knative_fake import FakeKnativeApi

pytestmark = pytest.mark.timeout(60)

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


async def start_with_progress(spawner: KnativeSpawner) -> tuple[str, list[dict[str, Any]]]:
    future = spawner.start()
    events = [event async for event in spawner.progress()]
    return await asyncio.wait_for(future, 15), events


async def test_start_poll_stop(fake: FakeKnativeApi) -> None:
    spawner = make_spawner(fake.url)
    name = spawner.service_name
    started = time.monotonic()
    url, events = await start_with_progress(spawner)
    assert url == f"http://{name}.{NS}.svc.cluster.local"
    assert time.monotonic() - started >= fake.ready_delay  # type: ignore[operator]
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
    await second.stop()


async def test_never_ready_times_out_with_a_clear_error(fake: FakeKnativeApi) -> None:
    fake.ready_delay = None
    spawner = make_spawner(fake.url, ready_timeout=1.5)
    started = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        await asyncio.wait_for(spawner.start(), 15)
    assert 1.5 <= time.monotonic() - started < 8
    message = str(info.value)
    assert spawner.service_name in message
    assert "not Ready within 1.5 s" in message
    assert "RevisionMissing" in message  # the last status Knative reported
    await spawner.stop()
    assert not fake.services


async def test_failed_revision_fails_start(fake: FakeKnativeApi) -> None:
    fake.ready_delay = None
    spawner = make_spawner(fake.url)
    future = spawner.start()
    await asyncio.sleep(0.3)
    fake.fail(NS, spawner.service_name, message="Back-off pulling image")
    with pytest.raises(RuntimeError, match="RevisionFailed: Back-off pulling image"):
        await asyncio.wait_for(future, 15)
    assert await spawner.poll() == 1  # a failed Service is not a running server
    await spawner.stop()


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
