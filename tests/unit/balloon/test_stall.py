"""StallDetector: fresh, unchanged and stalled stats."""

from __future__ import annotations

import pytest

from vmsilo.balloon.stall import Freshness, StallDetector


def test_advancing_timestamps_are_fresh() -> None:
    d = StallDetector(stall_after=10)
    assert d.observe("a", 100.0, now=0).freshness is Freshness.FRESH
    assert d.observe("a", 101.0, now=2).freshness is Freshness.FRESH


def test_unchanged_then_stalled_then_fresh_again() -> None:
    d = StallDetector(stall_after=10)
    d.observe("a", 100.0, now=0)
    s = d.observe("a", 100.0, now=2)
    assert (s.freshness, s.unchanged_ticks) == (Freshness.UNCHANGED, 1)
    assert s.describe() == "waiting for fresh guest stats"
    s = d.observe("a", None, now=9.9)
    assert s.freshness is Freshness.UNCHANGED
    s = d.observe("a", 100.0, now=10)
    assert (s.freshness, s.unchanged_ticks) == (Freshness.STALLED, 3)
    assert "not updated for 10 s (3 ticks)" in s.describe()
    assert d.observe("a", 100.5, now=12).freshness is Freshness.FRESH


def test_a_timestamp_going_backwards_is_not_fresh() -> None:
    d = StallDetector(stall_after=10)
    d.observe("a", 100.0, now=0)
    assert d.observe("a", 50.0, now=1).freshness is Freshness.UNCHANGED


def test_a_guest_that_never_sends_stats_stalls_and_vms_are_independent() -> None:
    d = StallDetector(stall_after=5)
    assert d.observe("a", None, now=0).freshness is Freshness.UNCHANGED
    d.observe("b", 1.0, now=0)
    assert d.observe("a", None, now=5).freshness is Freshness.STALLED
    assert d.observe("b", 2.0, now=5).freshness is Freshness.FRESH
    d.forget("a")
    assert d.observe("a", 1.0, now=6).freshness is Freshness.FRESH


def test_stall_after_must_be_positive() -> None:
    with pytest.raises(ValueError):
        StallDetector(stall_after=0)
