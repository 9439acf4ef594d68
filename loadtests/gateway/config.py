"""What one run measures and how much of it: the command line, and the constants every measure shares."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LOADTESTS = HERE.parent
REPO = LOADTESTS.parent
RESULTS = LOADTESTS / "results"
DEFAULT_JKG_VENV = LOADTESTS / ".venv-jkg"
JKG_REQUIREMENT = "jupyter-kernel-gateway==3.0.*"
CODE = "1+1"

STARTUP_TIMEOUT = 120.0  # a service to listen and fill its pool
REQUEST_TIMEOUT = 30.0  # one execute, any face
POOL_REFILL_TIMEOUT = 120.0
EVICTION_TIMEOUT = 120.0  # idle sessions to be written to the store and their kernels stopped
PIP_TIMEOUT = 900.0
MAX_REQUESTS_PER_LOOP = 1_000_000  # a throughput loop's hard count bound, beside its time bound
THROUGHPUT_GRACE = 60.0  # beyond --duration, before a throughput level is abandoned
EVICT_IDLE_AFTER = 1.0  # seconds: the eviction and cold-start services evict as soon as they may

Json = dict[str, Any]


@dataclass(frozen=True)
class Config:
    runs: int  # round trips per latency measure
    warmup: int
    rounds: int  # latency measures alternate in this many blocks
    duration: float  # seconds per throughput level
    new_session_samples: int
    bursts: int  # new-session bursts larger than the pool
    burst_extra: int  # requests per burst beyond the pool size
    sessions: int  # concurrent sessions at the top throughput level, and idle/evicted sessions for memory
    coldstart_samples: int
    pool_size: int
    redis: bool  # the services under test keep state in a Redis of the run's own (else the embedded store)
    checkpoint: bool
    skip_jkg: bool
    profile: bool  # py-spy the service and its kernels over extra blocks of executes
    coldstart_only: bool  # measure the replica cold start and nothing else
    mode: str  # "full", "quick" or "smoke"
    jkg_venv: Path
    output: Path

    @property
    def levels(self) -> tuple[int, ...]:
        """Concurrency levels of the throughput measure: powers of two up to, and always including, sessions."""
        powers = [n for n in (1, 2, 4, 8, 16, 32) if n < self.sessions]
        return (*powers, self.sessions)

    @property
    def store(self) -> str:
        return "redis" if self.redis else "embedded"

    def as_json(self) -> Json:
        return {
            "mode": self.mode,
            "store": self.store,
            "checkpoint_per_cell": self.checkpoint,
            "code": CODE,
            "runs": self.runs,
            "warmup": self.warmup,
            "latency_rounds": self.rounds,
            "throughput_seconds_per_level": self.duration,
            "concurrency_levels": list(self.levels),
            "sessions": self.sessions,
            "new_session_samples": self.new_session_samples,
            "bursts": self.bursts,
            "burst_size": self.pool_size + self.burst_extra,
            "coldstart_samples": self.coldstart_samples,
            "pool_size": self.pool_size,
            "evict_idle_after_seconds": EVICT_IDLE_AFTER,
            "skip_jkg": self.skip_jkg,
            "profile": self.profile,
            "coldstart_only": self.coldstart_only,
        }


# Per mode: runs, warmup, rounds, duration, new-session samples, bursts, burst extra, sessions, cold starts, pool.
MODES: dict[str, tuple[int, int, int, float, int, int, int, int, int, int]] = {
    "full": (500, 50, 10, 5.0, 20, 5, 4, 8, 5, 2),
    "quick": (50, 10, 5, 1.0, 5, 2, 2, 8, 2, 2),
    "smoke": (8, 2, 2, 0.3, 1, 1, 1, 2, 1, 1),
}


def parse_args(argv: Sequence[str]) -> Config:
    parser = argparse.ArgumentParser(
        prog="skg-bench",
        description="Benchmark the gateway against raw jupyter_client and jupyter-kernel-gateway 3.0 "
        "(loopback only): CPU per execute, latency, throughput, memory (PSS), new sessions and replica cold "
        "start. Prints one JSON document on stdout; progress goes to stderr.",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a short run: 50 round trips, 1 s per level")
    size.add_argument("--smoke", action="store_true", help="the shortest run that fills every section (CI smoke)")
    parser.add_argument("--redis", action="store_true", help="the services keep state in a Redis (else embedded)")
    parser.add_argument("--runs", type=int, default=None, help="round trips per latency measure (500)")
    parser.add_argument("--warmup", type=int, default=None, help="round trips before measuring (50)")
    parser.add_argument("--rounds", type=int, default=None, help="latency measures alternate in this many blocks")
    parser.add_argument("--duration", type=float, default=None, help="seconds per throughput level (5)")
    parser.add_argument("--new-session-samples", type=int, default=None, help="new sessions on a warm pool (20)")
    parser.add_argument("--bursts", type=int, default=None, help="bursts of new sessions larger than the pool (5)")
    parser.add_argument("--coldstart-samples", type=int, default=None, help="replica cold starts (5)")
    parser.add_argument("--sessions", type=int, default=None, help="top concurrency level; idle sessions (8)")
    parser.add_argument("--pool-size", type=int, default=None, help="warm pool of the services under test (2)")
    parser.add_argument("--skip-jkg", action="store_true", help="skip the jupyter-kernel-gateway comparison")
    parser.add_argument("--profile", action="store_true", help="py-spy profiles of REST and WebSocket executes")
    parser.add_argument(
        "--coldstart-only", action="store_true", help="measure only the replica cold start (no jupyter-kernel-gateway)"
    )
    parser.add_argument("--no-checkpoint", action="store_true", help="our service without per-cell checkpoints")
    parser.add_argument("--jkg-venv", type=Path, default=DEFAULT_JKG_VENV, help=f"its venv ({DEFAULT_JKG_VENV})")
    parser.add_argument("--output", type=Path, default=None, help=f"JSON result file (under {RESULTS})")
    args = parser.parse_args(list(argv))
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    runs, warmup, rounds, duration, new_sessions, bursts, extra, sessions, coldstarts, pool = MODES[mode]

    def pick(value: Any, default: Any) -> Any:
        return default if value is None else value

    suffix = ("-redis" if args.redis else "") + ("-coldstart" if args.coldstart_only else "")
    output = args.output or RESULTS / f"bench_gateway{suffix}.json"
    config = Config(
        runs=pick(args.runs, runs),
        warmup=pick(args.warmup, warmup),
        rounds=min(pick(args.rounds, rounds), pick(args.runs, runs)),
        duration=pick(args.duration, duration),
        new_session_samples=pick(args.new_session_samples, new_sessions),
        bursts=pick(args.bursts, bursts),
        burst_extra=extra,
        sessions=pick(args.sessions, sessions),
        coldstart_samples=pick(args.coldstart_samples, coldstarts),
        pool_size=pick(args.pool_size, pool),
        redis=args.redis,
        checkpoint=not args.no_checkpoint,
        skip_jkg=args.skip_jkg or args.coldstart_only,
        profile=args.profile,
        coldstart_only=args.coldstart_only,
        mode=mode,
        jkg_venv=args.jkg_venv.resolve(),
        output=output,
    )
    problems = [
        message
        for ok, message in (
            (1 <= config.runs <= 100_000, "--runs must be in [1, 100000]"),
            (0 <= config.warmup <= 10_000, "--warmup must be in [0, 10000]"),
            (1 <= config.rounds <= config.runs, "--rounds must be in [1, --runs]"),
            (0 < config.duration <= 600, "--duration must be in (0, 600]"),
            (1 <= config.new_session_samples <= 1000, "--new-session-samples must be in [1, 1000]"),
            (1 <= config.bursts <= 100, "--bursts must be in [1, 100]"),
            (1 <= config.coldstart_samples <= 100, "--coldstart-samples must be in [1, 100]"),
            (1 <= config.sessions <= 32, "--sessions must be in [1, 32]"),
            (1 <= config.pool_size <= 16, "--pool-size must be in [1, 16]"),
        )
        if not ok
    ]
    if problems:
        parser.error("; ".join(problems))
    return config
