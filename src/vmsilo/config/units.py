"""Sizes and durations as upstream writes them (``10G``, ``256m``, ``2s``, ``500ms``).

Pure parsing only: a size becomes bytes (binary multiples, suffix in either case), a duration
becomes seconds. Invalid input raises ``ValueError`` with a message that says what is accepted;
the config models turn that into a located problem.
"""

from __future__ import annotations

import re

_SIZE_SUFFIXES = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE_RE = re.compile(r"(?P<number>[0-9]+)(?P<suffix>[kKmMgGtT]?)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_RE = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]+)?)(?P<unit>ms|s|m|h)")

SIZE_HELP = 'write a whole number with an optional k/m/g/t suffix, e.g. "10G" or "256m"'
DURATION_HELP = 'write a number followed by ms, s, m or h, e.g. "2s" or "500ms"'


def parse_size(text: str | int) -> int:
    """Bytes in ``text``: ``"10G"`` → 10737418240. A bare integer is bytes."""
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a size; {SIZE_HELP}")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"size {text} is negative; {SIZE_HELP}")
        return text
    match = _SIZE_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a size; {SIZE_HELP}")
    return int(match["number"]) * _SIZE_SUFFIXES[match["suffix"].lower()]


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``"500ms"`` → 0.5, ``"2m"`` → 120.0."""
    match = _DURATION_RE.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"{text!r} is not a duration; {DURATION_HELP}")
    return float(match["number"]) * _DURATION_UNITS[match["unit"]]
