"""How long and how big each phase is, for ``--quick`` and for the full study (pure data, tested as data)."""

from __future__ import annotations

from dataclasses import dataclass

from loadtests.users.arrivals import DAY, Stage, make_daily, make_study, shifted


@dataclass(frozen=True)
class Plan:
    quick: bool
    think: float  # seconds between a user's cells (uniform 0.5x..1.5x)
    users: int  # steady users
    peak: int  # users during the burst
    ramp: float
    steady: float
    hold: float  # burst
    saturation: float
    day: tuple[float, ...]  # share of ``day_peak`` per compressed hour
    day_first_hour: int
    day_hours: int
    hour: float  # seconds per compressed hour
    night_hour: float  # seconds per hour with nobody on (the night, compressed further)
    day_peak: int
    idle_after: float  # idle time before cull / scale to zero, the same for every model
    evict_idle_after: float  # the gateway's own eviction of idle kernels to Redis
    cold_reps: int
    warm_reps: int
    idle_levels: tuple[int, ...]
    state_checks: int  # idle users checked for their state after the idle action
    rest_seconds: float  # REST and SSE users on the gateway (0: skipped)
    replicas: int = 2
    pool_size: int = 2
    notebook_path: bool = True  # also probe the gateway through a Jupyter server pointed at it
    memory_reads: int = 3  # consecutive readings, 1 s apart, that agree (same processes, PSS within 3 %)
    stop_timeout: float = 10.0
    spawn_concurrency: int = 8  # idle users started at once (CPU bound on 2 cores: more only queues)
    idle_baseline: bool = True  # scale everything to zero first, for a 'no users' memory reading

    def timeline(self) -> list[Stage]:
        study = make_study(self.users, self.peak, self.ramp, self.steady, self.hold, self.saturation)
        day = make_daily(self.day_peak, self.hour, self.day, self.day_first_hour, self.day_hours, self.night_hour)
        return study + shifted(day, study[-1].end)

    @property
    def locust_identities(self) -> int:
        return max(self.peak, self.day_peak, self.users)


def make_plan(quick: bool) -> Plan:
    if quick:
        # Checks the machinery end to end in under two minutes; its figures are from a handful of samples.
        return Plan(
            quick=True,
            think=1.0,
            users=2,
            peak=3,
            ramp=1.0,
            steady=2.5,
            hold=2.5,
            saturation=2.0,
            day=(1.0, 0.0, 1.0),
            day_first_hour=0,
            day_hours=3,
            hour=1.5,
            night_hour=1.5,
            day_peak=2,
            idle_after=4.0,
            evict_idle_after=1.0,
            cold_reps=1,
            warm_reps=1,
            idle_levels=(1,),
            state_checks=0,
            rest_seconds=0.0,
            pool_size=1,
            notebook_path=False,
            memory_reads=1,
            stop_timeout=1.0,
            idle_baseline=False,
        )
    # A day from 17:00 to 16:00 the next day: the evening, the night (everything idle), the morning's
    # returns, a three-hour lunch dip (those who leave are scaled to zero and come back), the afternoon.
    # The night's ten hours with nobody on last 1.5 s each, not 3 s: 15 s, of which every model spends the
    # first ~8 (its idle time and stop) going to zero and the rest at its floor; the report adds what a night
    # at the day's scale would cost at that floor.
    # The idle time is well above the longest think time plus the hub's activity reporting lag (~2 s), so the
    # culler never takes an active user's server; the lunch dip (3 hours) outlasts it, so leavers are culled.
    # The steady window gives ~100 warm cells per model, the saturation window several hundred.
    return Plan(
        quick=False,
        think=1.0,
        users=6,
        peak=16,
        ramp=10.0,
        steady=20.0,
        hold=30.0,
        saturation=8.0,
        day=DAY,
        day_first_hour=17,
        day_hours=23,
        hour=3.0,
        night_hour=1.5,
        day_peak=6,
        idle_after=6.0,
        evict_idle_after=3.0,
        cold_reps=3,
        warm_reps=3,
        idle_levels=(1, 10, 50),
        state_checks=3,
        rest_seconds=12.0,
        stop_timeout=6.0,
    )
