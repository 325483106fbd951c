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


def relative_luminance(rgb: tuple[int, int, int]) -> float:
    """WCAG 2 relative luminance of an sRGB colour, 0 (black) to 1 (white)."""

    def linear(channel: int) -> float:
        c = channel / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever contrasts more with ``background`` (for a VM-coloured title
    bar or label)."""
    luminance = relative_luminance(background)
    # Contrast ratios (L1 + 0.05) / (L2 + 0.05) against white (1.0) and black (0.0).
    return (0, 0, 0) if (luminance + 0.05) / 0.05 >= 1.05 / (luminance + 0.05) else (255, 255, 255)
