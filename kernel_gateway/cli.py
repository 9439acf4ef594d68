"""``skg``: the command line. ``skg serve`` runs a replica.

The benchmarks are commands of ``loadtests`` (``skg-bench``, ``python -m loadtests.bench_gateway``): the
product never imports its own benchmark.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pydantic import ValidationError
from pydantic_settings import CliApp

from . import __version__, logs
from .settings import Settings

USAGE = f"""skg {__version__}: Serverless Kernel Gateway

usage: skg serve [options]     run the service (skg serve --help lists the options)
       skg tenants NAME... | -   print a tenants file for tokens derived from $SKG_TENANT_KEY
       skg --version
"""


def serve(argv: Sequence[str]) -> int:
    try:
        settings = CliApp.run(Settings, cli_args=list(argv))
    except ValidationError as exc:
        print(f"skg serve: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_json)
    from .replica import run

    run(settings)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if args else 2
    if args[0] == "--version":
        print(__version__)
        return 0
    command, rest = args[0], args[1:]
    if command == "serve":
        return serve(rest)
    if command == "tenants":
        from .tenants import main as tenants

        return tenants(rest)
    print(f"skg: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
