"""A tick-by-tick model of a host and its guests, driven by the real policy.

Used by the trace tests and by ``bench/balloon_settle.py``. The model is deliberately simple
and says so: a guest's RAM minus its balloon is what it can use; its workload holds ``demand``
bytes and its tmpfs ``shmem`` bytes (reported among the caches, never available); page cache
fills what is left up to ``cache_want``; a balloon cannot take memory the workload or tmpfs
holds (deflate-on-oom). Every guest page not in the balloon is resident on the host.
The daemon's per-tick order is reproduced exactly: one host snapshot, then each VM in turn
(stall check, decision, resize), as ``vmsilo-balloond`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from vmsilo.balloon.interval import poll_interval
from vmsilo.balloon.policy import BalloonPolicy, Decision, Observation, next_target
from vmsilo.balloon.settings import BalloonSettings
from vmsilo.balloon.stall import Freshness, StallDetector


@dataclass
class GuestModel:
    name: str
    total: int
    demand: int
    cache_want: int = 0
    balloon: int = 0
    # How far the guest moves its balloon per tick (None: all the way), to model slow guests.
    balloon_rate: int | None = None
    stats_frozen: bool = False  # the guest's stats stop updating (a stalled guest)
    # Bytes held in tmpfs/shmem: the guest cannot drop them (like ``demand``), yet its balloon
    # stats report them among the "disk caches".
    shmem: int = 0
    _frozen_stats: Observation | None = field(default=None, repr=False)

    @property
    def usable(self) -> int:
        return self.total - self.balloon

    @property
    def available(self) -> int:
        """The guest's MemAvailable: free memory plus the clean cache it can drop."""
        return max(0, self.usable - self.held)

    @property
    def held(self) -> int:
        """Memory the guest cannot give up: its workload and its tmpfs."""
        return self.demand + self.shmem

    @property
    def cached(self) -> int:
        """The "disk caches" stat: clean page cache and shmem together, as Linux reports it."""
        return min(self.cache_want, self.available) + min(self.shmem, self.usable)

    @property
    def free(self) -> int:
        return self.available - min(self.cache_want, self.available)

    def move_balloon_towards(self, target: int) -> None:
        reachable = min(target, max(0, self.total - self.held))  # cannot take held memory
        step = reachable - self.balloon
        if self.balloon_rate is not None:
            step = max(-self.balloon_rate, min(self.balloon_rate, step))
        self.balloon += step


@dataclass(frozen=True)
class GuestTick:
    balloon: int
    guest_available: int
    freshness: Freshness
    decision: Decision | None  # None when the guest was skipped


@dataclass(frozen=True)
class TickRecord:
    tick: int
    seconds: float  # simulated time at the start of this tick
    interval: float  # length of this tick
    host_available: int
    guests: dict[str, GuestTick]


class Simulation:
    def __init__(
        self,
        settings: BalloonSettings,
        *,
        host_total: int,
        host_used: int,
        guests: list[GuestModel],
        stall_after: float = 10.0,
    ) -> None:
        self.settings = settings
        self.host_total = host_total
        self.host_used = host_used
        self.guests = {g.name: g for g in guests}
        self.critical_host = settings.critical_host_available(host_total)
        self.policies = {
            g.name: BalloonPolicy(
                critical_host_available=self.critical_host,
                critical_guest_available=settings.critical_guest_available,
                guest_available_bias=settings.guest_available_bias,
            )
            for g in guests
        }
        self.stall = StallDetector(stall_after)
        self.tick = 0
        self.seconds = 0.0

    @property
    def host_available(self) -> int:
        resident = sum(g.total - g.balloon for g in self.guests.values())
        return max(0, self.host_total - self.host_used - resident)

    def pressure(self) -> float:
        """A stand-in for PSI some avg10: zero above the critical line, rising below it."""
        if self.critical_host <= 0 or self.host_available >= self.critical_host:
            return 0.0
        return 100.0 * (self.critical_host - self.host_available) / self.critical_host

    def _observe(self, guest: GuestModel, host_available: int) -> tuple[Observation, float]:
        fresh = Observation(guest.balloon, guest.free, guest.cached, guest.total,
                            host_available, guest.available)
        if guest.stats_frozen:
            if guest._frozen_stats is None:
                guest._frozen_stats = fresh
            stale = guest._frozen_stats
            # The VMM still reports the live balloon size and host numbers are ours.
            return (Observation(guest.balloon, stale.guest_free, stale.guest_cached,
                                stale.guest_total, host_available, stale.guest_mem_available),
                    -1.0)
        guest._frozen_stats = None
        return fresh, self.seconds

    def step(self) -> TickRecord:
        interval = poll_interval(self.pressure(), self.settings)
        host_available = self.host_available  # one snapshot for every VM, as the daemon does
        ticks: dict[str, GuestTick] = {}
        for name, guest in self.guests.items():
            obs, stamp = self._observe(guest, host_available)
            state = self.stall.observe(name, stamp if stamp >= 0 else None, self.seconds)
            decision = None
            if state.freshness is Freshness.FRESH:
                decision = self.policies[name].decide(obs)
                target = next_target(obs.balloon_actual, decision.delta)
                if target != obs.balloon_actual:
                    guest.move_balloon_towards(target)
            ticks[name] = GuestTick(guest.balloon, guest.available, state.freshness, decision)
        record = TickRecord(self.tick, self.seconds, interval, host_available, ticks)
        self.tick += 1
        self.seconds += interval
        return record

    def run(
        self,
        ticks: int,
        events: Mapping[int, Callable[[Simulation], None]] | None = None,
    ) -> list[TickRecord]:
        records = []
        for _ in range(ticks):
            if events and self.tick in events:
                events[self.tick](self)
            records.append(self.step())
        return records

    def balanced_point(self) -> dict[str, int]:
        """The balloon sizes at which every guest's headroom equals the host's (the policy's
        fixed point, ignoring the dead band), for the current demands and learned floors."""
        guests = list(self.guests.values())

        def balloon_for(guest: GuestModel, host_above: float) -> int:
            policy = self.policies[guest.name]
            top = max(0, guest.total - guest.held)
            max_actual = max(policy.max_balloon_actual, guest.total * 3 // 4)

            def guest_above(balloon: int) -> float:
                bias = policy.guest_available_bias * min(balloon / max_actual, 1.0)
                available = max(0, guest.total - balloon - guest.held)
                return available - policy.learned_floor - bias

            lo, hi = 0, top  # guest_above falls as the balloon grows
            if guest_above(lo) <= host_above:
                return 0
            if guest_above(hi) >= host_above:
                return hi
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if guest_above(mid) > host_above else (lo, mid)
            return lo

        def host_above_given(h: float) -> float:
            balloons = sum(balloon_for(g, h) for g in guests)
            resident = sum(g.total for g in guests) - balloons
            return self.host_total - self.host_used - resident - self.critical_host

        # host_above_given falls as the assumed host headroom h rises: bisect its fixed point.
        lo_h, hi_h = -float(self.host_total), float(self.host_total)
        for _ in range(200):
            mid_h = (lo_h + hi_h) / 2
            if host_above_given(mid_h) > mid_h:
                lo_h = mid_h
            else:
                hi_h = mid_h
        return {g.name: balloon_for(g, lo_h) for g in guests}
