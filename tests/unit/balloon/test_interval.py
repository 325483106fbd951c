"""Poll interval from PSI, and the /proc/pressure/memory and /proc/meminfo parsers."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmsilo.balloon.interval import host_memory, parse_meminfo, parse_pressure, poll_interval
from vmsilo.balloon.settings import BalloonSettings

SETTINGS = BalloonSettings(poll_interval=2.0, min_poll_interval=0.25, psi_ceiling=25)

PSI = """some avg10=12.50 avg60=3.10 avg300=0.70 total=123456
full avg10=5.00 avg60=1.00 avg300=0.20 total=6543
"""

MEMINFO = """MemTotal:       16318412 kB
MemFree:         1234567 kB
MemAvailable:    8000000 kB
Buffers:          123456 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
"""


@pytest.mark.parametrize(("avg10", "expected"), [
    (0.0, 2.0), (12.5, 1.125), (25.0, 0.25), (80.0, 0.25), (-1.0, 2.0),
])
def test_interval_is_linear_from_slowest_to_fastest(avg10: float, expected: float) -> None:
    assert poll_interval(avg10, SETTINGS) == pytest.approx(expected)


def test_zero_ceiling_means_any_pressure_is_full_speed() -> None:
    s = BalloonSettings(psi_ceiling=0)
    assert poll_interval(0.0, s) == s.poll_interval
    assert poll_interval(0.01, s) == s.min_poll_interval


@given(st.floats(min_value=0, max_value=100), st.floats(min_value=0, max_value=100))
def test_interval_never_rises_with_pressure(a: float, b: float) -> None:
    low, high = sorted((a, b))
    assert (SETTINGS.min_poll_interval <= poll_interval(high, SETTINGS)
            <= poll_interval(low, SETTINGS) <= SETTINGS.poll_interval)


def test_parses_both_pressure_lines() -> None:
    p = parse_pressure(PSI)
    assert p.some.avg10 == 12.5
    assert p.some.total == 123456
    assert p.full is not None and p.full.avg300 == 0.2


@pytest.mark.parametrize("text", [
    "", "\n\n", "some avg10=abc avg60=1 avg300=1 total=1", "some avg10=1 avg60=1 total=1",
    "some avg10=101 avg60=1 avg300=1 total=1", "full avg10=1 avg60=1 avg300=1 total=1",
])
def test_pressure_without_a_valid_some_line_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="some"):
        parse_pressure(text)


def test_pressure_skips_a_malformed_full_line() -> None:
    p = parse_pressure("some avg10=1.00 avg60=1.00 avg300=1.00 total=5\nfull garbage\n")
    assert p.full is None and p.some.avg10 == 1.0


def test_meminfo_in_bytes() -> None:
    fields = parse_meminfo(MEMINFO)
    assert fields["MemTotal"] == 16318412 * 1024
    assert fields["HugePages_Total"] == 0
    memory = host_memory(MEMINFO)
    assert memory.available == 8000000 * 1024


def test_meminfo_skips_malformed_lines_and_names_what_is_missing() -> None:
    text = "MemTotal: lots kB\nweird line\nMemAvailable: 5 MB\nMemFree: -3 kB\nMemTotal: 4 kB\n"
    assert parse_meminfo(text) == {"MemTotal": 4096}
    with pytest.raises(ValueError, match="MemAvailable"):
        host_memory(text)


@given(st.text())
def test_parsers_never_raise_anything_but_value_error(text: str) -> None:
    parse_meminfo(text)
    with contextlib.suppress(ValueError):
        parse_pressure(text)
