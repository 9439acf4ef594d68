"""The Kubernetes API calls the spawner makes, one small method each, every call with its own timeout.

Only Knative Services (``serving.knative.dev/v1 services``) are touched: get, create, replace, delete. That is
all hub/rbac.yaml grants.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from kubernetes_asyncio.client import ApiClient, Configuration, CustomObjectsApi
from kubernetes_asyncio.client.exceptions import ApiException

from .objects import GROUP, PLURAL, VERSION, Obj

T = TypeVar("T")


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


class KnativeServices:
    """Knative Services in one namespace. ``None`` from get/delete means: no such Service."""

    def __init__(self, api_client: ApiClient, namespace: str, request_timeout: float = 10.0) -> None:
        self.api_client = api_client
        self.api = CustomObjectsApi(api_client)
        self.namespace = namespace
        self.request_timeout = request_timeout

    async def _call(self, method: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Obj:
        """One API call, bounded both by aiohttp's timeout and by the event loop (a hung connect, DNS...)."""
        coro = method(GROUP, VERSION, self.namespace, PLURAL, *args, _request_timeout=self.request_timeout, **kwargs)
        return cast(Obj, await asyncio.wait_for(coro, self.request_timeout + 1))

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


async def poll_until(
    check: Callable[[], Awaitable[T | None]],
    timeout: float,
    *,
    first_delay: float = 0.1,
    factor: float = 2.0,
    max_delay: float = 5.0,
    what: str = "condition",
) -> T:
    """Call ``check`` until it returns something else than None, sleeping with capped exponential backoff
    (with jitter) in between; TimeoutError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = first_delay
    while True:
        result = await check()
        if result is not None:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{what}: not reached in {timeout:g} s")
        await asyncio.sleep(min(delay * random.uniform(0.8, 1.2), remaining))
        delay = min(delay * factor, max_delay)
