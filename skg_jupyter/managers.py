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

from jupyter_server.gateway.managers import GatewayKernelSpecManager, GatewayMappingKernelManager

from .traffic import KernelLink
from .types import KernelLinks

Model = dict[str, Any]


class CachingGatewayMappingKernelManager(GatewayMappingKernelManager):
    """Set with ``--ServerApp.kernel_manager_class=skg_jupyter.CachingGatewayMappingKernelManager``."""

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
