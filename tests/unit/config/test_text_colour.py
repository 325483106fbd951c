"""Text on a VM's colour: black or white by WCAG luminance."""

import pytest

from vmsilo.config.colours import parse_colour, relative_luminance, text_colour


@pytest.mark.parametrize(
    ("colour", "text"),
    [("yellow", (0, 0, 0)), ("white", (0, 0, 0)), ("#3498db", (0, 0, 0)),
     ("navy", (255, 255, 255)), ("black", (255, 255, 255)), ("red", (0, 0, 0)),
     ("rgb(128, 0, 128)", (255, 255, 255))],
)
def test_text_colour_contrasts(colour: str, text: tuple[int, int, int]) -> None:
    assert text_colour(parse_colour(colour)) == text


def test_luminance_ends() -> None:
    assert relative_luminance((0, 0, 0)) == 0
    assert relative_luminance((255, 255, 255)) == pytest.approx(1)
