"""BalloonPolicy.decide against hand-computed ticks, and its invariants under hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmsilo.balloon.policy import (
    CRITICAL_SLACK,
    INITIAL_LEARNED_FLOOR,
    MIB,
    BalloonPolicy,
    Observation,
    next_target,
)

GIB = 1024 * MIB


def policy(host_critical: int = 800 * MIB, floor: int = 256 * MIB,
           bias: int = 0) -> BalloonPolicy:
    return BalloonPolicy(critical_host_available=host_critical,
                         critical_guest_available=floor, guest_available_bias=bias)


def test_splits_the_difference_between_guest_and_host_headroom() -> None:
    p = policy()
    # guest above: 3000 - 400 (learned floor) = 2600 MiB; host above: 1800 - 800 = 1000 MiB
    d = p.decide(Observation(0, 2000 * MIB, 1000 * MIB, 4 * GIB, 1800 * MIB, 3000 * MIB))
    assert d.guest_above_critical == 2600 * MIB
    assert d.host_above_critical == 1000 * MIB
    assert d.delta == 800 * MIB
    assert d.reason == "inflate 800 MiB: guest has more headroom than host"


def test_deflates_when_the_host_has_more_headroom() -> None:
    p = policy()
    d = p.decide(Observation(1 * GIB, 500 * MIB, 100 * MIB, 4 * GIB, 3000 * MIB, 600 * MIB))
    # bias 0; guest above 200, host above 2200 -> -1000, capped at -(balloon) = -1024
    assert d.delta == -1000 * MIB
    assert "deflate 1000 MiB" in d.reason
    assert next_target(1 * GIB, d.delta) == 24 * MIB


def test_never_deflates_below_an_empty_balloon() -> None:
    p = policy()
    d = p.decide(Observation(100 * MIB, 300 * MIB, 0, 4 * GIB, 8 * GIB))
    assert d.delta == -100 * MIB
    assert next_target(100 * MIB, d.delta) == 0
    d = p.decide(Observation(0, 300 * MIB, 0, 4 * GIB, 8 * GIB))
    assert d.delta == 0
    assert d.reason.startswith("hold: balloon is empty")


def test_dead_band_holds_for_a_small_delta() -> None:
    p = policy()
    # guest above 2000, host above 1990: raw delta 5 MiB, 0.25 % of either -> no action
    d = p.decide(Observation(0, 2400 * MIB, 0, 4 * GIB, 2790 * MIB))
    assert d.delta == 0
    assert "dead band" in d.reason


def test_acts_on_a_small_delta_near_a_critical_line() -> None:
    p = policy()
    # host is 0.5 MiB above its line: any delta counts
    d = p.decide(Observation(0, 400 * MIB + 3 * MIB, 0, 4 * GIB, 800 * MIB + MIB // 2))
    assert d.delta == (3 * MIB - MIB // 2) // 2
    assert d.delta > 0


def test_bias_scales_with_fullness() -> None:
    p = policy(bias=400 * MIB)
    # max_balloon_actual starts at 3/4 of 4 GiB = 3 GiB; balloon 1.5 GiB -> 50 % -> bias 200
    d = p.decide(Observation(1536 * MIB, 1000 * MIB, 0, 4 * GIB, 1800 * MIB))
    assert d.bias == 200 * MIB
    assert d.guest_above_critical == (1000 - 400 - 200) * MIB


def test_inflation_is_capped_at_the_learned_floor_without_slack() -> None:
    p = policy(host_critical=0, floor=0)
    # learned floor 400: ChromeOS would cap at available - 400 + 10 MiB of slack; vmsilo stops
    # at the floor itself.
    d = p.decide(Observation(0, 500 * MIB, 0, 4 * GIB, -1000 * MIB))
    assert d.delta == 500 * MIB - INITIAL_LEARNED_FLOOR
    assert "(capped)" in d.reason


@pytest.mark.parametrize("available", [INITIAL_LEARNED_FLOOR - CRITICAL_SLACK,
                                       INITIAL_LEARNED_FLOOR - 1, INITIAL_LEARNED_FLOOR])
def test_a_guest_at_its_floor_is_never_inflated(available: int) -> None:
    # host far below its critical line; the guest at (or just under) its learned floor: the
    # host's need is no reason to take the guest's last memory, tick after tick.
    p = policy(host_critical=2 * GIB, floor=0)
    for _ in range(5):
        d = p.decide(Observation(0, available, 0, 4 * GIB, 0, available))
        assert d.delta <= 0, d
        assert d.delta == 0 or d.reason.startswith("deflate")
    # (the floor may have been learned down to the guest's level: it is still its floor)
    at_floor = p.learned_floor
    d = p.decide(Observation(0, at_floor, 0, 4 * GIB, 0, at_floor))
    assert (d.delta, d.reason) == (0, "hold: guest is at its floor")


SHMEM_GUEST = dict(free=150 * MIB, reclaimable=100 * MIB, shmem=int(1.7 * GIB))


def test_tmpfs_and_shmem_are_not_counted_as_available() -> None:
    """Issue 15 (17): 150 MiB free, 100 MiB of reclaimable cache and 1.7 GiB of shmem. The
    balloon's "disk caches" stat reports cache and shmem together; counting it as available
    inflated 885 MiB in one tick. The guest's own MemAvailable (~250 MiB) is below its floor:
    nothing is taken."""
    free, reclaimable, shmem = (SHMEM_GUEST["free"], SHMEM_GUEST["reclaimable"],
                                SHMEM_GUEST["shmem"])
    caches = reclaimable + shmem
    total = 4 * GIB
    host_critical = 8 * GIB * 5 // 100
    # The host numbers that gave the 885 MiB: host_above = guest_above - 2 * 885 MiB.
    old_guest_above = free + caches - INITIAL_LEARNED_FLOOR
    host_available = old_guest_above - 2 * 885 * MIB + host_critical
    as_before = policy(host_critical=host_critical).decide(
        Observation(0, free, caches, total, host_available, free + caches))
    assert as_before.delta == 885 * MIB  # the number, had free + caches been counted

    p = policy(host_critical=host_critical)
    d = p.decide(Observation(0, free, caches, total, host_available, free + reclaimable))
    assert d.guest_available == 250 * MIB
    assert d.delta <= 0
    # Without a MemAvailable stat, only free memory counts; never the caches.
    no_avail = policy(host_critical=host_critical).decide(
        Observation(0, free, caches, total, host_available))
    assert no_avail.guest_available == free
    assert no_avail.delta <= 0


def test_inflation_never_crosses_the_hard_floor() -> None:
    p = policy(host_critical=2 * GIB, floor=400 * MIB)
    # host far below its line, guest just above the hard floor: the slack must not apply
    d = p.decide(Observation(0, 405 * MIB, 0, 4 * GIB, 0))
    assert d.delta == 5 * MIB
    d = p.decide(Observation(0, 399 * MIB, 0, 4 * GIB, 0))
    assert d.delta <= 0


def test_learned_floor_ratchets_down_after_two_low_ticks_but_not_below_the_hard_floor() -> None:
    p = policy(floor=256 * MIB)
    low = Observation(0, 300 * MIB, 0, 1 * GIB, 8 * GIB)
    p.decide(low)
    assert p.learned_floor == INITIAL_LEARNED_FLOOR
    d = p.decide(Observation(0, 280 * MIB, 0, 1 * GIB, 8 * GIB))
    assert p.learned_floor == 300 * MIB
    assert "learned floor 400 MiB -> 300 MiB" in d.reason
    p.decide(Observation(0, 200 * MIB, 0, 1 * GIB, 8 * GIB))
    assert p.learned_floor == 280 * MIB
    p.decide(Observation(0, 100 * MIB, 0, 1 * GIB, 8 * GIB))
    assert p.learned_floor == 256 * MIB  # would be 200 without the hard floor
    p.decide(Observation(0, 2 * GIB, 0, 4 * GIB, 8 * GIB))
    assert p.learned_floor == 256 * MIB  # never ratchets back up


def test_learned_floor_holds_while_the_balloon_is_nearly_full() -> None:
    p = policy()
    full = Observation(3 * GIB, 300 * MIB, 0, 4 * GIB, 8 * GIB)  # 100 % of 3/4 of 4 GiB
    p.decide(full)
    p.decide(full)
    assert p.learned_floor == INITIAL_LEARNED_FLOOR


def test_hard_floor_above_the_initial_guess_starts_the_learned_floor_there() -> None:
    assert policy(floor=512 * MIB).learned_floor == 512 * MIB


def test_negative_margins_are_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        policy(floor=-1)


sizes = st.integers(min_value=0, max_value=64 * GIB)


@st.composite
def ticks(draw: st.DrawFn) -> tuple[BalloonPolicy, list[Observation]]:
    p = policy(host_critical=draw(st.integers(0, 4 * GIB)), floor=draw(st.integers(0, 2 * GIB)),
               bias=draw(st.integers(0, 2 * GIB)))
    total = draw(st.integers(1, 64 * GIB))
    obs = [Observation(draw(st.integers(0, total)), draw(st.integers(0, total)),
                       draw(st.integers(0, total)), total, draw(st.integers(-GIB, 64 * GIB)),
                       draw(st.none() | st.integers(0, total)))
           for _ in range(draw(st.integers(1, 6)))]
    return p, obs


@given(ticks())
def test_invariants_hold_on_any_sequence(case: tuple[BalloonPolicy, list[Observation]]) -> None:
    p, observations = case
    for obs in observations:
        d = p.decide(obs)
        assert p.learned_floor >= p.hard_floor
        # never push the guest below its (learned, hence hard) floor by inflating
        if d.delta > 0:
            assert obs.guest_available - d.delta >= d.learned_floor >= p.hard_floor
        # the caches (tmpfs and shmem among them) are never counted as available
        assert obs.guest_available == (obs.guest_free if obs.guest_mem_available is None
                                       else obs.guest_mem_available)
        # never ask for a negative balloon
        assert obs.balloon_actual + d.delta >= 0
        assert next_target(obs.balloon_actual, d.delta) >= 0
        assert d.reason
        # the dead band: both sides comfortably above critical and a <= 1 % raw delta -> 0
        raw = abs(d.guest_above_critical - d.host_above_critical) // 2
        if (d.guest_above_critical >= MIB and d.host_above_critical >= MIB
                and raw * 100 <= d.guest_above_critical
                and raw * 100 <= d.host_above_critical):
            assert d.delta == 0
