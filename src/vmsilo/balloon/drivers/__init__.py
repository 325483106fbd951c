"""One balloon driver per hypervisor, behind ``BalloonDriver`` (see ``base``)."""

from vmsilo.balloon.drivers.base import BalloonDriver, DriverError, GuestStats, VmmReplyError

__all__ = ["BalloonDriver", "DriverError", "GuestStats", "VmmReplyError"]
