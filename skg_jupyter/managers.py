"""Gateway managers whose answers to JupyterLab's polls come from memory while no gateway socket is open.

JupyterLab asks for the kernel list every 10 s and for the kernel specs every minute, tab idle or not; the
stock gateway managers pass each poll on to the gateway, which keeps a Knative gateway awake. Here, while no
connection of this server has a gateway socket open or opening (``quiet``), a poll is answered with the last
list the gateway gave. Whatever this server does to a kernel itself (start, restart, shut down) drops the
cached list, and any open socket means fresh answers again, so the cache only hides what changes on the
gateway by itself while everything is idle; that is reconciled on the next poll after the tab is used.
"""

from __future__ import annotations

import copy
from typing import Any

from jupyter_server.gateway.gateway_client import gateway_request
from jupyter_server.gateway.managers import (
    GatewayKernelSpecManager,
    GatewayMappingKernelManager,
    GatewaySessionManager,
)
from jupyter_server.utils import url_escape, url_path_join
from tornado.escape import json_decode
from traitlets import Bool

from .traffic import KernelLink
from .types import KernelLinks

Model = dict[str, Any]


class CachingGatewayMappingKernelManager(GatewayMappingKernelManager):
    """Set with ``--ServerApp.kernel_manager_class=skg_jupyter.CachingGatewayMappingKernelManager``.

    Also keeps the user's kernels across a restart of this server. The stock manager deletes every kernel on
    the gateway when the server stops (``shutdown_all``) and knows only the kernels it started itself; with a
    stateless gateway a kernel *is* the notebook's checkpointed state, and this server is stopped whenever
    Knative scales it to zero or a hub culls it. So it leaves them on the gateway (which evicts idle ones to its
    store by itself) and adopts the gateway's kernels it does not know yet, so that sessions kept in a
    persistent ``SessionManager.database_filepath`` find their kernels again.
    """

    shutdown_kernels_on_exit = Bool(
        False,
        config=True,
        help="Delete every kernel on the gateway when this server stops (jupyter_server's behaviour). Off: "
        "they stay, with their state, for the next server of this user.",
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # type: ignore[no-untyped-call]
        self._links: dict[str, KernelLink] = {}
        self._listed: list[Model] | None = None

    def link(self, kernel_id: str) -> KernelLink:
        return self._links.setdefault(kernel_id, KernelLink())

    @property
    def quiet(self) -> bool:
        return all(link.upstream <= 0 for link in self._links.values())

    def _forget(self, kernel_id: str | None = None) -> None:
        self._listed = None
        if kernel_id is not None:
            self._links.pop(kernel_id, None)

    async def list_kernels(self, **kwargs: Any) -> list[Model]:
        if self._listed is not None and self.quiet:
            self.log.debug("Kernel list answered from the cache: no gateway socket is open")
            return copy.deepcopy(self._listed)
        models: list[Model] = await super().list_kernels(**kwargs)  # type: ignore[no-untyped-call]
        self._listed = copy.deepcopy(models)
        return models

    async def start_kernel(self, *, kernel_id: str | None = None, path: str | None = None, **kwargs: Any) -> str:  # type: ignore[override]
        self._forget()
        try:
            started: str = await super().start_kernel(kernel_id=kernel_id, path=path, **kwargs)  # type: ignore[no-untyped-call]
            return started
        finally:
            self._forget()  # a list fetched while it was starting may lack it

    async def restart_kernel(self, kernel_id: str, now: bool = False, **kwargs: Any) -> None:  # type: ignore[override]
        self._forget()
        link = self._links.get(kernel_id)
        if link is not None:  # a new kernel session: its old kernel_info_reply and state are stale
            link.info_reply, link.execution_state = None, "unknown"
        await super().restart_kernel(kernel_id, now=now, **kwargs)  # type: ignore[no-untyped-call]

    async def shutdown_kernel(self, kernel_id: str, now: bool = False, restart: bool = False) -> None:  # type: ignore[override]
        self._forget(kernel_id)
        await super().shutdown_kernel(kernel_id, now=now, restart=restart)  # type: ignore[no-untyped-call]

    def remove_kernel(self, kernel_id: str) -> Any:
        self._forget(kernel_id)
        return super().remove_kernel(kernel_id)  # type: ignore[no-untyped-call]

    async def shutdown_all(self, now: bool = False) -> None:  # type: ignore[override]
        if self.shutdown_kernels_on_exit:
            await super().shutdown_all(now=now)  # type: ignore[no-untyped-call]
            return
        kept = list(self._kernels)
        for kernel_id in kept:
            self.remove_kernel(kernel_id)
        if kept:
            self.log.info("Left %d kernel(s) on the gateway for the next server: %s", len(kept), ", ".join(kept))

    async def adopt(self, kernel_id: str | None = None) -> None:
        """Take the gateway's kernels this server does not know (those of an earlier server of this user)."""
        response = await gateway_request(self.kernels_url, method="GET")
        for model in json_decode(response.body):
            kid = str(model.get("id", ""))
            if not kid or kid in self._kernels or (kernel_id is not None and kid != kernel_id):
                continue
            km = self.kernel_manager_factory(parent=self, log=self.log)
            km.kernel_id = kid
            km.kernel_url = url_path_join(self.kernels_url, url_escape(kid))
            km.kernel = model
            self._kernels[kid] = km
            self.log.info("Adopted kernel %s from the gateway", kid)
        self._forget()


class AdoptingGatewaySessionManager(GatewaySessionManager):
    """Set with ``--ServerApp.session_manager_class=skg_jupyter.AdoptingGatewaySessionManager``.

    A session row whose kernel this server does not know is checked against the gateway before it is taken
    for culled: after a restart, the kernel is usually still there.
    """

    async def kernel_culled(self, kernel_id: str) -> bool:
        manager = self.kernel_manager
        if kernel_id not in manager and isinstance(manager, CachingGatewayMappingKernelManager):
            try:
                await manager.adopt(kernel_id)
            except Exception as exc:  # the gateway is unreachable: the stock answer (culled) stands
                self.log.warning("Could not ask the gateway for kernel %s: %s", kernel_id, exc)
        culled: bool = await super().kernel_culled(kernel_id)
        return culled


class CachingGatewayKernelSpecManager(GatewayKernelSpecManager):
    """Set with ``--ServerApp.kernel_spec_manager_class=skg_jupyter.CachingGatewayKernelSpecManager``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # type: ignore[no-untyped-call]
        self._specs: Model | None = None
        self._spec: dict[str, Model] = {}
        self._resources: dict[tuple[str, str], bytes | None] = {}

    @property
    def quiet(self) -> bool:
        manager = getattr(self.parent, "kernel_manager", None)
        return isinstance(manager, KernelLinks) and manager.quiet

    async def list_kernel_specs(self) -> Model:
        if self._specs is not None and self.quiet:
            return copy.deepcopy(self._specs)
        specs: Model = await super().list_kernel_specs()  # type: ignore[no-untyped-call]
        self._specs = copy.deepcopy(specs)
        return specs

    async def get_kernel_spec(self, kernel_name: str, **kwargs: Any) -> Model:  # type: ignore[override]
        if kernel_name in self._spec and self.quiet:
            return copy.deepcopy(self._spec[kernel_name])
        spec: Model = await super().get_kernel_spec(kernel_name, **kwargs)  # type: ignore[no-untyped-call]
        self._spec[kernel_name] = copy.deepcopy(spec)
        return spec

    async def get_kernel_spec_resource(self, kernel_name: str, path: str) -> bytes | None:
        key = (kernel_name, path)
        if key in self._resources and self.quiet:
            return self._resources[key]
        resource: bytes | None = await super().get_kernel_spec_resource(kernel_name, path)  # type: ignore[no-untyped-call]
        self._resources[key] = resource
        return resource
