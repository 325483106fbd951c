"""The balloon daemon's options as plain numbers (bytes, seconds, percent).

Built from the config's ``vmsilo-balloond`` table (``BalloonSettings.from_table``) or directly
in tests and the bench. Validation here repeats the config's ranges so that a settings value
made by hand cannot carry nonsense into the policy; it never reads files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from vmsilo.errors import UserError

LOG_LEVELS = ("error", "warn", "info", "debug", "trace")


class BalloondTable(Protocol):
    """What ``from_table`` needs from the config's ``vmsilo-balloond`` model."""

    @property
    def log_level(self) -> str: ...
    @property
    def critical_host_percent(self) -> int: ...
    @property
    def psi_ceiling(self) -> int: ...
    @property
    def poll_interval_seconds(self) -> float: ...
    @property
    def min_poll_interval_seconds(self) -> float: ...
    @property
    def critical_guest_available_bytes(self) -> int: ...
    @property
    def guest_available_bias_bytes(self) -> int: ...


@dataclass(frozen=True)
class BalloonSettings:
    poll_interval: float = 2.0
    critical_host_percent: int = 5
    critical_guest_available: int = 256 << 20
    guest_available_bias: int = 400 << 20
    min_poll_interval: float = 0.25
    psi_ceiling: int = 25
    log_level: str = "info"

    def __post_init__(self) -> None:
        where = "vmsilo-balloond"
        if not self.poll_interval > 0:
            raise UserError(f"{where}.pollInterval: {self.poll_interval} s is not positive; "
                            'set a duration such as "2s"')
        if not 0 < self.min_poll_interval <= self.poll_interval:
            raise UserError(
                f"{where}.minPollInterval: {self.min_poll_interval} s must be positive and at "
                f"most pollInterval ({self.poll_interval} s); lower it or raise pollInterval")
        if not 0 <= self.critical_host_percent <= 100:
            raise UserError(f"{where}.criticalHostPercent: {self.critical_host_percent} is not "
                            "a percentage; use a whole number from 0 to 100")
        if not 0 <= self.psi_ceiling <= 100:
            raise UserError(f"{where}.psiCeiling: {self.psi_ceiling} is not a percentage; "
                            "use a whole number from 0 to 100")
        if self.critical_guest_available < 0:
            raise UserError(f"{where}.criticalGuestAvailable: {self.critical_guest_available} "
                            'is negative; use a size such as "256m"')
        if self.guest_available_bias < 0:
            raise UserError(f"{where}.guestAvailableBias: {self.guest_available_bias} is "
                            'negative; use a size such as "400m"')
        if self.log_level not in LOG_LEVELS:
            raise UserError(f"{where}.logLevel: {self.log_level!r} is not a log level; use "
                            f"one of {', '.join(LOG_LEVELS)}")

    @classmethod
    def from_table(cls, table: BalloondTable) -> BalloonSettings:
        return cls(
            poll_interval=table.poll_interval_seconds,
            critical_host_percent=table.critical_host_percent,
            critical_guest_available=table.critical_guest_available_bytes,
            guest_available_bias=table.guest_available_bias_bytes,
            min_poll_interval=table.min_poll_interval_seconds,
            psi_ceiling=table.psi_ceiling,
            log_level=table.log_level,
        )

    def critical_host_available(self, host_total: int) -> int:
        """The host's critical margin in bytes for a host with ``host_total`` bytes of RAM."""
        return host_total * self.critical_host_percent // 100
