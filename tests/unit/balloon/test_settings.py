"""BalloonSettings: defaults, the config table, and bad values."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from vmsilo.balloon.settings import BalloonSettings
from vmsilo.errors import UserError


@dataclass
class Table:
    log_level: str = "debug"
    critical_host_percent: int = 10
    psi_ceiling: int = 50
    poll_interval_seconds: float = 1.0
    min_poll_interval_seconds: float = 0.5
    critical_guest_available_bytes: int = 400 << 20
    guest_available_bias_bytes: int = 500 << 20


def test_defaults_are_upstreams() -> None:
    s = BalloonSettings()
    assert (s.poll_interval, s.min_poll_interval, s.critical_host_percent, s.psi_ceiling) == (
        2.0, 0.25, 5, 25)
    assert s.critical_guest_available == 256 << 20
    assert s.guest_available_bias == 400 << 20
    assert s.critical_host_available(16 << 30) == (16 << 30) * 5 // 100


def test_from_table() -> None:
    s = BalloonSettings.from_table(Table())
    assert s == BalloonSettings(1.0, 10, 400 << 20, 500 << 20, 0.5, 50, "debug")


@pytest.mark.parametrize(("change", "field"), [
    ({"poll_interval": 0}, "pollInterval"),
    ({"min_poll_interval": 3.0}, "minPollInterval"),
    ({"min_poll_interval": 0}, "minPollInterval"),
    ({"critical_host_percent": 101}, "criticalHostPercent"),
    ({"psi_ceiling": -1}, "psiCeiling"),
    ({"critical_guest_available": -1}, "criticalGuestAvailable"),
    ({"guest_available_bias": -5}, "guestAvailableBias"),
    ({"log_level": "verbose"}, "logLevel"),
])
def test_bad_values_name_the_option(change: dict[str, object], field: str) -> None:
    with pytest.raises(UserError, match=f"vmsilo-balloond.{field}"):
        BalloonSettings(**change)  # type: ignore[arg-type]
