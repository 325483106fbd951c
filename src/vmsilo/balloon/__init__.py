"""Balloon memory management: the pure policy (ChromeOS's BalanceAvailable), the poll interval
from host memory pressure, stall detection, a simulator of guests and host, and the drivers
that talk to each hypervisor's balloon. The daemon loop that ties them together stays thin:
read host memory once, then per VM ``driver.stats()`` → ``StallDetector.observe`` →
``BalloonPolicy.decide`` → ``driver.set_target``."""

from vmsilo.balloon.policy import MIB, BalloonPolicy, Decision, Observation, next_target
from vmsilo.balloon.settings import BalloonSettings

__all__ = ["MIB", "BalloonPolicy", "BalloonSettings", "Decision", "Observation", "next_target"]
