"""jupyter_server-side classes that let an idle JupyterLab tab leave a scale-to-zero gateway alone.

Point JupyterLab at the Serverless Kernel Gateway with all three (README.md, "JupyterLab on a scale-to-zero
gateway"):

    jupyter lab --gateway-url=https://skg-gateway.example.com \\
      --ServerApp.kernel_websocket_connection_class=skg_jupyter.IdleClosingGatewayWebSocketConnection \\
      --ServerApp.kernel_manager_class=skg_jupyter.CachingGatewayMappingKernelManager \\
      --ServerApp.kernel_spec_manager_class=skg_jupyter.CachingGatewayKernelSpecManager \\
      --ServerApp.session_manager_class=skg_jupyter.AdoptingGatewaySessionManager \\
      --IdleClosingGatewayWebSocketConnection.idle_timeout=120

Only jupyter_server is needed (no part of the gateway), so the package can be copied into a JupyterLab image.
"""

from __future__ import annotations

from .connection import IdleClosingGatewayWebSocketConnection
from .managers import (
    AdoptingGatewaySessionManager,
    CachingGatewayKernelSpecManager,
    CachingGatewayMappingKernelManager,
)

# The options of the command line above, for launchers (docker/start-jupyterlab.sh spells them out too).
SERVER_OPTIONS = (
    "--ServerApp.kernel_websocket_connection_class=skg_jupyter.IdleClosingGatewayWebSocketConnection",
    "--ServerApp.kernel_manager_class=skg_jupyter.CachingGatewayMappingKernelManager",
    "--ServerApp.kernel_spec_manager_class=skg_jupyter.CachingGatewayKernelSpecManager",
    "--ServerApp.session_manager_class=skg_jupyter.AdoptingGatewaySessionManager",
)

__all__ = [
    "SERVER_OPTIONS",
    "AdoptingGatewaySessionManager",
    "CachingGatewayKernelSpecManager",
    "CachingGatewayMappingKernelManager",
    "IdleClosingGatewayWebSocketConnection",
]
