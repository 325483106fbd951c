"""ChromeOS's BalanceAvailable balloon policy, as a pure function of numbers.

One ``BalloonPolicy`` per VM keeps the little state the policy learns (the largest balloon seen,
the learned guest floor, last tick's guest available and fullness); ``decide`` turns one tick's
numbers into a ``Decision``: a signed delta in bytes (positive inflates the balloon, taking
memory from the guest and giving it to the host) and a short reason for ``vmsilo balloon
status``. No I/O, no clock: the daemon and the simulator feed it, tests replay traces through it.

vmsilo's differences from ChromeOS: ``criticalGuestAvailable`` is a hard floor. The learned
floor (which starts at ChromeOS's 400 MiB and only ratchets down) never goes below it, and no
inflation ever leaves the guest below its learned floor: ChromeOS lets inflation cut 10 MiB
(its MAX_CRITICAL_DELTA) into the guest's critical margin; here a guest at its floor is never
inflated, whatever the host needs (the host's own pressure is for the host's OOM handling, not
for the balloon to push onto a guest that has nothing to give).

What the guest has available is the guest kernel's own ``MemAvailable`` (virtio-balloon's
``VIRTIO_BALLOON_S_AVAIL``, QEMU's ``stat-available-memory``, the stat every Linux guest since
4.6 sends). It is never ``free + caches``: the balloon's "disk caches" stat is the guest's
``NR_FILE_PAGES``, which counts shmem and tmpfs pages that the guest cannot drop; a guest with
150 MiB free, 100 MiB of clean cache and 1.7 GiB in tmpfs has about 250 MiB available, not
1.95 GiB. A guest that does not report MemAvailable is credited with its free memory only.
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1 << 20

# ChromeOS's starting guess for the guest's critical available memory; the policy learns a
# lower value for guests that live happily below it (but never below the configured floor).
INITIAL_LEARNED_FLOOR = 400 * MIB
# Slack past either critical line that the caps allow, as in ChromeOS (MAX_CRITICAL_DELTA).
CRITICAL_SLACK = 10 * MIB
# The learned floor only moves while the balloon is clearly not the cause of the low memory.
RATCHET_FULLNESS_LIMIT = 95
# Either side this close to its critical line: always act, however small the delta.
NEAR_CRITICAL = 1 * MIB


@dataclass(frozen=True)
class Observation:
    """One tick's numbers for one VM, all in bytes. ``balloon_actual`` is the balloon's size
    (memory taken from the guest), not QEMU's logical guest size. ``guest_mem_available`` is
    the guest's own MemAvailable, None when the guest does not report it. ``guest_cached`` (the
    guest's file pages, shmem and tmpfs included) is carried for display only: the policy
    never counts it as available."""

    balloon_actual: int
    guest_free: int
    guest_cached: int
    guest_total: int
    host_available: int
    guest_mem_available: int | None = None

    @property
    def guest_available(self) -> int:
        """What the guest could hand over without swapping or killing: its MemAvailable, else
        its free memory (never its caches, which may be tmpfs)."""
        if self.guest_mem_available is not None:
            return self.guest_mem_available
        return self.guest_free


@dataclass(frozen=True)
class Decision:
    delta: int  # bytes; positive inflates the balloon
    reason: str
    guest_available: int
    guest_above_critical: int
    host_above_critical: int
    learned_floor: int
    bias: int

    def target(self, balloon_actual: int) -> int:
        return next_target(balloon_actual, self.delta)


def next_target(balloon_actual: int, delta: int) -> int:
    """The balloon size to request; the caller resizes only when it differs from actual."""
    return max(0, balloon_actual + delta)


def _mib(n: int) -> str:
    return f"{n / MIB:.0f} MiB"


class BalloonPolicy:
    """The per-VM state of BalanceAvailable and its decision for each tick."""

    def __init__(
        self,
        *,
        critical_host_available: int,
        critical_guest_available: int,
        guest_available_bias: int,
    ) -> None:
        if min(critical_host_available, critical_guest_available, guest_available_bias) < 0:
            raise ValueError("balloon policy margins must not be negative")
        self.critical_host_available = critical_host_available
        self.hard_floor = critical_guest_available
        self.guest_available_bias = guest_available_bias
        self.learned_floor = max(INITIAL_LEARNED_FLOOR, critical_guest_available)
        self.max_balloon_actual = 0
        self._previous: tuple[int, int] | None = None  # (guest available, fullness %)

    def decide(self, obs: Observation) -> Decision:
        if self.max_balloon_actual == 0:
            # ChromeOS starts from 3/4 of the guest, learned from its first stats.
            self.max_balloon_actual = obs.guest_total * 3 // 4
        self.max_balloon_actual = max(self.max_balloon_actual, obs.balloon_actual)
        guest_available = obs.guest_available
        full_percent = (obs.balloon_actual * 100 // self.max_balloon_actual
                        if self.max_balloon_actual > 0 else 0)

        floor_before = self.learned_floor
        if self._previous is not None:
            prev_available, prev_full = self._previous
            if (guest_available < self.learned_floor and full_percent < RATCHET_FULLNESS_LIMIT
                    and prev_available < self.learned_floor
                    and prev_full < RATCHET_FULLNESS_LIMIT):
                # Two ticks in a row below the floor with the balloon not to blame: this guest
                # simply runs with less, so learn its level instead of starving it further.
                self.learned_floor = max(self.hard_floor, min(self.learned_floor, prev_available))
        self._previous = (guest_available, full_percent)

        bias = self.guest_available_bias * full_percent // 100
        guest_above = guest_available - self.learned_floor - bias
        host_above = obs.host_available - self.critical_host_available
        # Inflating moves memory from guest to host, so the balanced point is halfway.
        raw = _trunc_div(guest_above - host_above, 2)
        low = -(host_above + CRITICAL_SLACK)
        high = guest_available - self.learned_floor + CRITICAL_SLACK
        capped = min(max(raw, low), high)  # when the caps cross, protecting the guest wins
        if capped > 0:
            # Never inflate into the guest's floor: ChromeOS's high cap allows CRITICAL_SLACK
            # past it, and a guest at its floor would give up 10 MiB a tick for ever.
            capped = min(capped, max(0, guest_available - self.learned_floor))

        learned = (f"; learned floor {_mib(floor_before)} -> {_mib(self.learned_floor)}"
                   if self.learned_floor != floor_before else "")

        def decision(delta: int, reason: str) -> Decision:
            return Decision(delta, reason + learned, guest_available, guest_above, host_above,
                            self.learned_floor, bias)

        near_critical = guest_above < NEAR_CRITICAL or host_above < NEAR_CRITICAL
        # ChromeOS judges the dead band on the uncapped delta.
        significant = (near_critical or abs(raw) * 100 > guest_above
                       or abs(raw) * 100 > host_above)
        if not significant:
            return decision(0, "balanced: within the 1% dead band")
        delta = max(capped, -obs.balloon_actual)
        return decision(delta, self._explain(delta, raw, guest_above, host_above))

    def _explain(self, delta: int, raw: int, guest_above: int, host_above: int) -> str:
        if delta == 0:
            if raw > 0:
                return "hold: guest is at its floor"
            return "hold: balloon is empty" if raw < 0 else "balanced"
        verb = "inflate" if delta > 0 else "deflate"
        if host_above < 0 < delta:
            why = "host below its critical line"
        elif guest_above < 0 > delta:
            why = "guest below its floor"
        elif delta > 0:
            why = "guest has more headroom than host"
        else:
            why = "host has more headroom than guest"
        capped = " (capped)" if delta != raw else ""
        return f"{verb} {_mib(abs(delta))}{capped}: {why}"


def _trunc_div(a: int, b: int) -> int:
    """Integer division rounding toward zero, as C++ does (Python's // rounds down)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q
