"""The Kubernetes API calls the spawner makes, one small method each, every call with its own timeout.

Knative Services (``serving.knative.dev/v1 services``: get, create, replace, delete) and the user's
PersistentVolumeClaim (create, delete). That is all hub/rbac.yaml grants.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

from kubernetes_asyncio.client import ApiClient, Configuration, CoreV1Api, CustomObjectsApi
from kubernetes_asyncio.client.exceptions import ApiException

from .objects import GROUP, PLURAL, VERSION, Obj


def make_api_client(host: str = "", verify_ssl: bool | None = None, ssl_ca_cert: str = "") -> ApiClient:
    """An ApiClient on the process-wide configuration (in-cluster or kubeconfig, as KubeSpawner loaded it),
    with the API server address, TLS verification and CA overridden when given."""
    config = Configuration.get_default_copy()
    if host:
        config.host = host.rstrip("/")
    if verify_ssl is not None:
        config.verify_ssl = verify_ssl
    if ssl_ca_cert:
        config.ssl_ca_cert = ssl_ca_cert
    return ApiClient(configuration=config)


async def _bounded(coro: Awaitable[Any], timeout: float) -> Obj:
    """One API call, bounded by aiohttp's timeout and by the event loop too (a hung connect, DNS...)."""
    return cast(Obj, await asyncio.wait_for(coro, timeout + 1))


class KnativeServices:
    """Knative Services in one namespace. ``None`` from get/delete means: no such Service."""

    def __init__(self, api_client: ApiClient, namespace: str, request_timeout: float = 10.0) -> None:
        self.api_client = api_client
        self.api = CustomObjectsApi(api_client)
        self.namespace = namespace
        self.request_timeout = request_timeout

    async def _call(self, method: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Obj:
        coro = method(GROUP, VERSION, self.namespace, PLURAL, *args, _request_timeout=self.request_timeout, **kwargs)
        return await _bounded(coro, self.request_timeout)

    async def get(self, name: str) -> Obj | None:
        try:
            return await self._call(self.api.get_namespaced_custom_object, name)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    async def create(self, body: Obj) -> Obj:
        return await self._call(self.api.create_namespaced_custom_object, body)

    async def replace(self, name: str, body: Obj) -> Obj:
        """PUT the Service (``body.metadata.resourceVersion`` must be the current one); Knative rolls a revision."""
        return await self._call(self.api.replace_namespaced_custom_object, name, body)

    async def delete(self, name: str) -> Obj | None:
        """Delete with foreground propagation (revisions and pods go first); None if it was already gone."""
        try:
            return await self._call(self.api.delete_namespaced_custom_object, name, propagation_policy="Foreground")
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    async def create_or_replace(self, body: Obj) -> Obj:
        """Create the Service; if one of that name exists (a lost hub state, a crashed stop), replace its spec."""
        try:
            return await self.create(body)
        except ApiException as e:
            if e.status != 409:
                raise
        name = body["metadata"]["name"]
        current = await self.get(name)
        if current is None:  # deleted in between
            return await self.create(body)
        updated = {**body, "metadata": {**body["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]}}
        return await self.replace(name, updated)


class VolumeClaims:
    """PersistentVolumeClaims in one namespace: the user's home volume, as KubeSpawner makes it."""

    def __init__(self, api_client: ApiClient, namespace: str, request_timeout: float = 10.0) -> None:
        self.api = CoreV1Api(api_client)
        self.namespace = namespace
        self.request_timeout = request_timeout

    async def ensure(self, body: Any) -> bool:
        """Create the claim; True if it was created, False if it existed already (the user's files)."""
        coro = self.api.create_namespaced_persistent_volume_claim(
            self.namespace, body, _request_timeout=self.request_timeout
        )
        try:
            await _bounded(coro, self.request_timeout)
        except ApiException as e:
            if e.status == 409:
                return False
            raise
        return True

    async def delete(self, name: str) -> bool:
        """Delete the claim; False if there was none."""
        coro = self.api.delete_namespaced_persistent_volume_claim(
            name, self.namespace, _request_timeout=self.request_timeout
        )
        try:
            await _bounded(coro, self.request_timeout)
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        return True
