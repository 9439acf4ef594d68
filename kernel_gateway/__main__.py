"""``python -m kernel_gateway [options]`` runs the service, like ``skg serve``."""

from __future__ import annotations

import sys

from .cli import serve

raise SystemExit(serve(sys.argv[1:]))
