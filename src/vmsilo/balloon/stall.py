"""Stall detection: a guest whose balloon stats stop updating is left alone and reported.

The policy must never act on stale numbers (it would keep inflating on a guest_available the
guest no longer has), so each tick the daemon reports every VM's stats timestamp here. A
timestamp that advanced is ``FRESH`` (decide); one that did not is ``UNCHANGED`` (skip this tick;
stats arrive at the VMM's own pace, which can be slower than a tick under pressure); one that
has not advanced for ``stall_after`` seconds is ``STALLED`` (skip and report). Time comes from
the caller, so this stays pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Freshness(Enum):
    FRESH = "fresh"
    UNCHANGED = "unchanged"
    STALLED = "stalled"


@dataclass(frozen=True)
class StatsState:
    freshness: Freshness
    unchanged_ticks: int  # consecutive ticks without a new timestamp
    unchanged_for: float  # seconds since the timestamp last advanced (or since first seen)

    def describe(self) -> str:
        if self.freshness is Freshness.STALLED:
            return (f"stalled: guest stats have not updated for {self.unchanged_for:.0f} s "
                    f"({self.unchanged_ticks} ticks); balloon left alone")
        if self.freshness is Freshness.UNCHANGED:
            return "waiting for fresh guest stats"
        return "fresh"


@dataclass
class _Track:
    last_update: float | None
    changed_at: float
    ticks: int


class StallDetector:
    def __init__(self, stall_after: float = 10.0) -> None:
        if stall_after <= 0:
            raise ValueError("stall_after must be positive")
        self.stall_after = stall_after
        self._tracks: dict[str, _Track] = {}

    def observe(self, vm: str, last_update: float | None, now: float) -> StatsState:
        """Record this tick's stats timestamp for ``vm`` (None: no stats arrived this tick)."""
        track = self._tracks.get(vm)
        if track is None:
            track = self._tracks[vm] = _Track(None, now, 0)
        if last_update is not None and (track.last_update is None
                                        or last_update > track.last_update):
            track.last_update, track.changed_at, track.ticks = last_update, now, 0
            return StatsState(Freshness.FRESH, 0, 0.0)
        track.ticks += 1
        waited = now - track.changed_at
        freshness = Freshness.STALLED if waited >= self.stall_after else Freshness.UNCHANGED
        return StatsState(freshness, track.ticks, waited)

    def forget(self, vm: str) -> None:
        """The VM went away; a VM of the same name later starts with a clean record."""
        self._tracks.pop(vm, None)
