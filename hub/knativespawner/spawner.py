"""KnativeSpawner: KubeSpawner's pod, run as one scale-to-zero Knative Service per user server.

The pod is KubeSpawner's (image, resources, env with JUPYTERHUB_API_TOKEN..., profile list, volumes);
:func:`hub.knativespawner.objects.make_knative_service` wraps it; this class is glue: it calls the API
(:mod:`hub.knativespawner.client`), waits, and reports progress. KubeSpawner's pod/event reflectors are never
started, so the hub needs RBAC on Knative Services and PersistentVolumeClaims only (hub/rbac.yaml).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from types import SimpleNamespace
from typing import Any, ClassVar, TypeVar

import aiohttp
from jupyterhub.utils import exponential_backoff  # type: ignore[import-untyped]
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config import ConfigException
from kubespawner import KubeSpawner
from traitlets import Bool, Dict, Enum, Float, Integer, List, Unicode, default

from kernel_gateway.tenants import TENANT_NAME, derive_token

from .client import KnativeServices, VolumeClaims, make_api_client
from .objects import (
    DEFAULT_FEATURES,
    Gateway,
    Obj,
    Scaling,
    dropped_fields,
    failure_message,
    make_knative_service,
    pod_fields,
    readiness,
    service_url,
)

T = TypeVar("T")
Event = dict[str, Any]


class KnativeSpawner(KubeSpawner):  # type: ignore[misc]  # KubeSpawner is untyped
    """Spawn each user's server as a Knative Service (min-scale 0, max-scale 1) whose kernels run on the
    Serverless Kernel Gateway."""

    gateway_url = Unicode(help="The Serverless Kernel Gateway's URL, as the user's pod reaches it.").tag(config=True)
    gateway_token = Unicode(help="The gateway's token as a value (prefer gateway_token_secret).").tag(config=True)
    gateway_token_secret = Unicode(
        help="Name of a Secret in the user namespace holding the gateway's token (key: gateway_token_secret_key)."
    ).tag(config=True)
    gateway_token_secret_key = Unicode("SKG_TOKEN", help="Key of the token in gateway_token_secret.").tag(config=True)
    gateway_tenant_key = Unicode(
        help="A secret key (16+ characters; default $SKG_TENANT_KEY) from which each hub user's own gateway token "
        "is derived, so that every user is a tenant of the gateway and sees only their own kernels. The "
        "gateway's tenants file comes from the same key: `SKG_TENANT_KEY=... skg tenants <user>...`. Set, it "
        "takes the place of gateway_token and gateway_token_secret."
    ).tag(config=True)

    @default("gateway_tenant_key")
    def _tenant_key_from_env(self) -> str:
        return os.environ.get("SKG_TENANT_KEY", "")

    url_source = Enum(
        ["address", "url"],
        default_value="address",
        help="Which URL the hub's proxy uses: status.address.url (cluster-local) or status.url (the route's).",
    ).tag(config=True)
    cluster_local = Bool(True, help="Label the Service cluster-local: no public route.").tag(config=True)
    ready_timeout = Float(0.0, help="Seconds to wait for Ready=True; 0: start_timeout.").tag(config=True)
    stop_timeout = Float(60.0, help="Seconds to wait for the deleted Service to be gone.").tag(config=True)
    scale_to_zero_retention = Unicode("0s", help="Keep the last pod this long after traffic stops.").tag(config=True)
    stable_window = Unicode("300s", help="Autoscaler window: idle time before scaling to zero.").tag(config=True)
    revision_timeout_seconds = Integer(600, help="Longest request (and WebSocket) in seconds.").tag(config=True)
    container_concurrency = Integer(0, help="In-flight requests per pod (0: unlimited).").tag(config=True)
    extra_service_annotations = Dict(
        value_trait=Unicode(), help="Annotations on the Knative Service (not its revisions)."
    ).tag(config=True)
    knative_features = List(
        Unicode(),
        default_value=sorted(DEFAULT_FEATURES),
        help="The cluster's enabled Knative `kubernetes.podspec-<name>` feature flags (config-features), by name: "
        "the pod fields they allow are kept. The default keeps the user's PersistentVolumeClaim, which needs "
        "persistent-volume-claim and persistent-volume-write enabled; [] for a cluster with default flags.",
    ).tag(config=True)

    _clients: ClassVar[dict[tuple[object, str], ApiClient]] = {}
    _pvc_exists: bool  # KubeSpawner's: the claim is known to exist (kept in the state)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._events: list[Event] = []
        self._new_event = asyncio.Event()
        try:
            super().__init__(*args, **kwargs)
        except ConfigException:
            # No in-cluster config and no kubeconfig: fine when the API server is given (k8s_api_host, e.g.
            # `kubectl proxy`), since this spawner only uses its own client; KubeSpawner's CoreV1Api is unused.
            if not self.k8s_api_host:
                raise

    # -- API access ------------------------------------------------------------------------------------------

    def _api_client(self) -> ApiClient:
        key = (asyncio.get_running_loop(), self.k8s_api_host)
        client = self._clients.get(key)
        if client is None:
            client = make_api_client(self.k8s_api_host, self.k8s_api_verify_ssl, self.k8s_api_ssl_ca_cert)
            self._clients[key] = client
        return client

    @property
    def services(self) -> KnativeServices:
        return KnativeServices(self._api_client(), self.namespace, self.k8s_api_request_timeout)

    @property
    def claims(self) -> VolumeClaims:
        return VolumeClaims(self._api_client(), self.namespace, self.k8s_api_request_timeout)

    @classmethod
    async def close_clients(cls) -> None:
        """Close the shared API clients (at hub shutdown, or the end of a test)."""
        clients, cls._clients = list(cls._clients.values()), {}
        for client in clients:
            await client.close()

    async def _retry(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        """Retry a call on transient errors (timeouts, connection errors, 429 and 5xx) with backoff."""
        box: list[T] = []

        async def attempt() -> bool:
            try:
                box.append(await call())
                return True
            except ApiException as e:
                if e.status != 429 and (e.status is None or e.status < 500):
                    raise
                self.log.warning("%s: API server answered %s, retrying", what, e.status)
            except (TimeoutError, aiohttp.ClientError) as e:
                self.log.warning("%s: %r, retrying", what, e)
            return False

        await exponential_backoff(attempt, f"{what}: no success in {self.k8s_api_request_retry_timeout:g} s",
                                  timeout=self.k8s_api_request_retry_timeout)  # fmt: skip
        return box[0]

    # -- the Service -----------------------------------------------------------------------------------------

    @property
    def service_name(self) -> str:
        name: str = self.pod_name
        return name

    def _gateway(self) -> Gateway:
        if not self.gateway_url:
            raise ValueError("KnativeSpawner.gateway_url is not set: where do the user's kernels run?")
        if self.gateway_tenant_key:
            name = self.user.name
            if len(self.gateway_tenant_key) < 16 or not TENANT_NAME.match(name):
                raise ValueError(f"no gateway token for {name!r}: a 16+ character key and a tenant-safe user name")
            return Gateway(self.gateway_url, derive_token(self.gateway_tenant_key.encode(), name))
        secret = (self.gateway_token_secret, self.gateway_token_secret_key) if self.gateway_token_secret else None
        return Gateway(self.gateway_url, self.gateway_token or None, secret)

    def _scaling(self) -> Scaling:
        return Scaling(
            window=self.stable_window,
            scale_to_zero_retention=self.scale_to_zero_retention,
            container_concurrency=self.container_concurrency,
            timeout_seconds=self.revision_timeout_seconds,
            response_start_timeout_seconds=self.revision_timeout_seconds,
            idle_timeout_seconds=self.revision_timeout_seconds,
        )

    async def get_service_manifest_knative(self) -> Obj:
        """The Knative Service for this server, from KubeSpawner's pod manifest."""
        pod_fields(self.knative_features)  # an unknown flag name fails here, before anything is created
        pod = await self.get_pod_manifest()
        pod_dict: Obj = self.services.api_client.sanitize_for_serialization(pod)
        dropped = dropped_fields(pod_dict, self.knative_features)
        if dropped:
            self.log.warning("Knative Service %s leaves out: %s", self.service_name, ", ".join(dropped))
        base_url = self.server.base_url if self.server else "/"
        labels = self._build_common_labels(self._expand_all(self.extra_labels))
        return make_knative_service(
            self.service_name,
            self.namespace,
            pod_dict,
            gateway=self._gateway(),
            port=self.port,
            labels=labels,
            annotations=self._build_common_annotations(self._expand_all(self.extra_service_annotations)),
            scaling=self._scaling(),
            probe_path=base_url.rstrip("/") + "/api",
            cluster_local=self.cluster_local,
            features=self.knative_features,
        )

    # -- progress --------------------------------------------------------------------------------------------

    def _emit(self, progress: int, message: str) -> None:
        self.log.info("%s: %s", self.service_name, message)
        self._events.append({"progress": progress, "message": message})
        self._new_event.set()

    async def progress(self) -> AsyncIterator[Event]:
        """Events of the current start, as they happen, until start() ends."""
        sent = 0
        while True:
            while sent < len(self._events):
                yield self._events[sent]
                sent += 1
            future = self._start_future
            if future is None or future.done():
                return
            self._new_event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new_event.wait(), 1.0)

    # -- the Spawner API -------------------------------------------------------------------------------------

    def start(self) -> asyncio.Future[str]:
        self._events = []
        self._start_future = asyncio.ensure_future(self._start_service())
        future: asyncio.Future[str] = self._start_future
        return future

    async def _start_service(self) -> str:
        if self.enable_user_namespaces:
            raise NotImplementedError("KnativeSpawner does not create namespaces: leave enable_user_namespaces off")
        await self.load_user_options()
        self._emit(0, f"Preparing Knative Service {self.namespace}/{self.service_name}")
        body = await self.get_service_manifest_knative()
        await self._ensure_volume()
        await self._retry(lambda: self.services.create_or_replace(body), f"create {self.service_name}")
        self._emit(20, "Knative Service created, waiting for its revision to be Ready")
        timeout = self.ready_timeout or self.start_timeout
        try:
            url: str = await exponential_backoff(
                self._ready_url, f"Knative Service {self.service_name} not Ready", timeout=timeout, timeout_tolerance=0
            )
        except TimeoutError as e:
            raise TimeoutError(
                f"Knative Service {self.namespace}/{self.service_name} was not Ready within {timeout:g} s "
                f"(last status: {self._last_status}); see `kubectl -n {self.namespace} describe ksvc "
                f"{self.service_name}`"
            ) from e
        self._emit(90, f"Knative Service Ready at {url}")
        return url

    async def _ensure_volume(self) -> None:
        """The user's PersistentVolumeClaim, as KubeSpawner makes it (z2jh `singleuser.storage.type: dynamic`):
        created on the first start, then found again on every start, so the files outlive scale to zero."""
        if not self.storage_pvc_ensure or self._pvc_exists:
            return
        body: Obj = self._api_client().sanitize_for_serialization(self.get_pvc_manifest())
        created = await self._retry(lambda: self.claims.ensure(body), f"create PVC {self.pvc_name}")
        self._emit(10, f"{'Created' if created else 'Found'} PersistentVolumeClaim {self.pvc_name}")
        self._pvc_exists = True  # persisted in the state (KubeSpawner.get_state), so a renamed template is safe

    _last_status = "no status yet"

    async def _ready_url(self) -> str | None:
        """The URL once Ready; None while pending; RuntimeError if Knative reports Ready=False."""
        service = await self.services.get(self.service_name)
        if service is None:
            raise RuntimeError(f"Knative Service {self.service_name} disappeared while starting")
        state = readiness(service)
        if state == "failed":
            raise RuntimeError(f"Knative Service {self.service_name} failed: {failure_message(service)}")
        status = failure_message(service) if state == "pending" else "Ready"
        if status != self._last_status:
            self._last_status = status
            self._emit(50, f"Knative Service: {status}")
        if state != "ready":
            return None
        url = service_url(service, "url" if self.url_source == "url" else "address")
        if url is None:
            raise RuntimeError(f"Knative Service {self.service_name} is Ready but has no {self.url_source} URL")
        return url

    async def poll(self) -> int | None:
        """None while the Service exists and is Ready (scaled to zero counts) or becoming so; 1 when gone/failed.

        An API error is not taken for a dead server: None, and the next poll asks again. Only the Kubernetes API
        is asked, never the server itself, so polling does not wake a server scaled to zero.
        """
        try:
            service = await self.services.get(self.service_name)
        except (ApiException, TimeoutError, aiohttp.ClientError) as e:
            self.log.warning("poll %s: %r; assuming it still runs", self.service_name, e)
            return None
        if service is None or (service.get("metadata") or {}).get("deletionTimestamp"):
            return 1
        state = readiness(service)
        if state == "failed":
            self.log.warning("Knative Service %s failed: %s", self.service_name, failure_message(service))
            return 1
        if state == "ready" and self._check_pending:
            self._trust_knative_readiness()
        return None

    def _trust_knative_readiness(self) -> None:
        """At hub start JupyterHub polls every running server and then checks it over HTTP (``User._wait_up``),
        which would wake every user scaled to zero. Knative has just said Ready (it keeps a scaled-to-zero
        revision Ready), so that check is answered from there, for this one check of this one server."""
        server = self.server
        if server is None:
            return
        version = getattr(self, "_jupyterhub_version", None)

        async def wait_up(*args: Any, **kwargs: Any) -> SimpleNamespace:
            del server.wait_up  # later checks (a new start) are real HTTP checks again
            self.log.info("%s: Ready per Knative; not woken by an HTTP check", self.service_name)
            return SimpleNamespace(headers={"X-JupyterHub-Version": version} if version else {})

        server.wait_up = wait_up

    async def stop(self, now: bool = False) -> None:
        """Delete the Service; unless ``now``, wait until it (and, foreground, its revisions) is gone."""
        name = self.service_name
        await self._retry(lambda: self.services.delete(name), f"delete {name}")
        if now:
            return

        async def gone() -> bool:
            return await self.services.get(name) is None

        await exponential_backoff(gone, f"Knative Service {name} not deleted in {self.stop_timeout:g} s",
                                  timeout=self.stop_timeout)  # fmt: skip

    async def delete_forever(self) -> None:
        """The user (or the named server) is deleted: delete the PVC this spawner made, as KubeSpawner does
        (``delete_pvc``), unless a named server shares it with the default server."""
        if not self.storage_pvc_ensure or not self.delete_pvc:
            return
        if self.name and "{user_server}" not in self.pvc_name_template:
            self.log.info("Not deleting %s: the named server %s shares it", self.pvc_name, self.name)
            return
        name = self.pvc_name
        await self._retry(lambda: self.claims.delete(name), f"delete PVC {name}")
