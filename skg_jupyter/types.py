"""Protocols between the connection and the kernel manager of skg_jupyter."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .traffic import KernelLink


@runtime_checkable
class KernelLinks(Protocol):
    """A kernel manager that keeps one :class:`KernelLink` per kernel (CachingGatewayMappingKernelManager).
    The connection works without one, but then cannot answer a reconnecting browser's kernel_info_request
    itself, and the kernel list is not cached."""

    def link(self, kernel_id: str) -> KernelLink: ...

    @property
    def quiet(self) -> bool:
        """No connection of this server has a gateway socket open or opening."""
        ...
