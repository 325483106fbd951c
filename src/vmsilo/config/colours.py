"""Window-decoration colours: CSS names, ``#rgb``, ``#rrggbb`` and ``rgb(r,g,b)``.

Upstream accepts exactly these forms for a VM's ``color``. This module turns one into an
``(r, g, b)`` tuple or raises ``ValueError`` naming the accepted forms; nothing else.
"""

from __future__ import annotations

import re

import webcolors

COLOUR_HELP = 'use a CSS colour name ("green"), "#rgb", "#rrggbb" or "rgb(r,g,b)" with 0-255'
_HEX_RE = re.compile(r"#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})")
# CSS Color Level 4 added one name that webcolors' CSS3 table lacks.
_CSS4_ONLY = {"rebeccapurple": (102, 51, 153)}
_RGB_RE = re.compile(r"rgb\(\s*(\d{1,3})\s*,\s*(\d{1,3})\s*,\s*(\d{1,3})\s*\)", re.IGNORECASE)


def parse_colour(text: str) -> tuple[int, int, int]:
    """``"red"`` → (255, 0, 0); ``"#3498db"`` → (52, 152, 219); ``"rgb(1,2,3)"`` → (1, 2, 3)."""
    value = text.strip()
    if _HEX_RE.fullmatch(value):
        rgb = webcolors.hex_to_rgb(value)
        return (rgb.red, rgb.green, rgb.blue)
    match = _RGB_RE.fullmatch(value)
    if match:
        channels = tuple(int(part) for part in match.groups())
        if any(channel > 255 for channel in channels):
            raise ValueError(f"colour {text!r} has a channel above 255; {COLOUR_HELP}")
        return (channels[0], channels[1], channels[2])
    if value.lower() in _CSS4_ONLY:
        return _CSS4_ONLY[value.lower()]
    try:
        rgb = webcolors.name_to_rgb(value.lower())
    except ValueError:
        raise ValueError(f"unknown colour {text!r}; {COLOUR_HELP}") from None
    return (rgb.red, rgb.green, rgb.blue)
