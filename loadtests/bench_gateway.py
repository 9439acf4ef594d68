"""``python -m loadtests.bench_gateway`` and ``skg-bench``: the gateway benchmark, which lives in
``loadtests/gateway/`` (see its package docstring)."""

from __future__ import annotations

from loadtests.gateway.__main__ import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
