"""``skg-bench`` / ``python -m loadtests.bench_gateway`` / ``python -m loadtests.gateway``."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx

from loadtests.common import BenchError, log, sigterm_as_exit

from .bench import run_bench
from .config import parse_args


def main(argv: list[str] | None = None) -> int:
    config = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        with sigterm_as_exit():
            result = run_bench(config)
    except (BenchError, subprocess.SubprocessError, httpx.HTTPError, OSError, TimeoutError) as exc:
        print(f"bench_gateway: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    text = json.dumps(result, indent=2)
    print(text)
    config.output.parent.mkdir(parents=True, exist_ok=True)
    config.output.write_text(text + "\n")
    log("bench", f"written to {config.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
