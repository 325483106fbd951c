"""What the agent knows about itself: boot time and the running-command count that the host's
autoShutdown reads through the idle report."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path


def boot_time(proc_stat: Path = Path("/proc/stat")) -> float:
    """Wall-clock time the machine booted (``btime`` in /proc/stat)."""
    try:
        for line in proc_stat.read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return time.time() - time.monotonic()


@dataclass
class AgentState:
    boot_time: float = field(default_factory=boot_time)
    running: int = 0
    last_ended: float | None = None

    def command_started(self) -> None:
        self.running += 1

    def command_ended(self) -> None:
        self.running -= 1
        self.last_ended = time.time()
