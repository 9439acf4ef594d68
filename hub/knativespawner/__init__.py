"""A JupyterHub spawner: one scale-to-zero Knative Service per user server, kernels on the gateway.

``hub.knativespawner.objects`` is pure (no Kubernetes client needed); the spawner is imported lazily so that
the manifest builder can be used and tested without JupyterHub.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .spawner import KnativeSpawner

__all__ = ["KnativeSpawner"]


def __getattr__(name: str) -> Any:
    if name == "KnativeSpawner":
        from .spawner import KnativeSpawner

        return KnativeSpawner
    raise AttributeError(name)
