"""How often the daemon ticks, and the host's memory numbers it ticks on.

``poll_interval`` maps PSI memory pressure to an interval: ``pollInterval`` at no pressure,
falling linearly to ``minPollInterval`` at ``psiCeiling`` and above, so the balloons react
faster exactly when the host is short. The parsers read ``/proc/pressure/memory`` and
``/proc/meminfo`` text; the kernel writes these, but a malformed line is skipped rather than
trusted, and a missing field is reported by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vmsilo.balloon.settings import BalloonSettings

PSI_MEMORY = Path("/proc/pressure/memory")
MEMINFO = Path("/proc/meminfo")


@dataclass(frozen=True)
class Pressure:
    """One PSI line (``some`` or ``full``): averages in percent, total stall time in µs."""

    avg10: float
    avg60: float
    avg300: float
    total: int


@dataclass(frozen=True)
class MemoryPressure:
    some: Pressure
    full: Pressure | None  # absent on kernels before 5.13 for some resources


@dataclass(frozen=True)
class HostMemory:
    total: int  # bytes
    available: int  # bytes, MemAvailable


def poll_interval(psi_avg10: float, settings: BalloonSettings) -> float:
    """Seconds until the next tick for a pressure of ``psi_avg10`` percent."""
    slowest, fastest = settings.poll_interval, settings.min_poll_interval
    if settings.psi_ceiling <= 0:
        share = 1.0 if psi_avg10 > 0 else 0.0
    else:
        share = min(max(psi_avg10, 0.0) / settings.psi_ceiling, 1.0)
    return slowest - (slowest - fastest) * share


def _parse_pressure_line(fields: list[str]) -> Pressure | None:
    values: dict[str, str] = {}
    for field in fields:
        key, sep, value = field.partition("=")
        if sep:
            values[key] = value
    try:
        averages = [float(values[k]) for k in ("avg10", "avg60", "avg300")]
        total = int(values["total"])
    except (KeyError, ValueError):
        return None
    if any(not 0.0 <= a <= 100.0 for a in averages) or total < 0:
        return None
    return Pressure(averages[0], averages[1], averages[2], total)


def parse_pressure(text: str) -> MemoryPressure:
    """Parse ``/proc/pressure/memory``. Raises ``ValueError`` without a valid ``some`` line."""
    lines: dict[str, Pressure] = {}
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        kind, fields = words[0], words[1:]
        if kind in ("some", "full") and kind not in lines:
            parsed = _parse_pressure_line(fields)
            if parsed is not None:
                lines[kind] = parsed
    if "some" not in lines:
        raise ValueError("memory pressure text has no valid 'some avg10=… total=…' line")
    return MemoryPressure(lines["some"], lines.get("full"))


def parse_meminfo(text: str) -> dict[str, int]:
    """``/proc/meminfo`` as bytes by field name; lines that do not parse are skipped."""
    fields: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        parts = rest.split()
        if not sep or not parts or not parts[0].isdigit() or len(parts) > 2:
            continue
        scale = 1024 if parts[1:] == ["kB"] else 1 if not parts[1:] else 0
        if scale:
            fields.setdefault(name.strip(), int(parts[0]) * scale)
    return fields


def host_memory(meminfo_text: str) -> HostMemory:
    fields = parse_meminfo(meminfo_text)
    missing = [k for k in ("MemTotal", "MemAvailable") if k not in fields]
    if missing:
        raise ValueError(f"/proc/meminfo has no {' or '.join(missing)} line")
    return HostMemory(total=fields["MemTotal"], available=fields["MemAvailable"])


def read_host_memory(path: Path = MEMINFO) -> HostMemory:
    return host_memory(path.read_text())


def read_pressure(path: Path = PSI_MEMORY) -> MemoryPressure | None:
    """Current memory pressure, or None when the kernel has no PSI (CONFIG_PSI off)."""
    try:
        return parse_pressure(path.read_text())
    except (OSError, ValueError):
        return None
