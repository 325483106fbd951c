from __future__ import annotations

import pytest

from vmsilo.config import parse_colour, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10G", 10 * 1024**3),
        ("10g", 10 * 1024**3),
        ("256m", 256 * 1024**2),
        ("256M", 256 * 1024**2),
        ("256k", 256 * 1024),
        ("2t", 2 * 1024**4),
        ("1514", 1514),
        (4096, 4096),
        ("0", 0),
    ],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "10 G", "10GB", "1.5G", "-1", "G", "ten", "10x"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(text)


def test_parse_size_rejects_negative_and_bool() -> None:
    with pytest.raises(ValueError, match="negative"):
        parse_size(-5)
    with pytest.raises(ValueError, match="not a size"):
        parse_size(True)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2s", 2.0), ("500ms", 0.5), ("250ms", 0.25), ("2m", 120.0), ("1h", 3600.0), ("1.5s", 1.5)],
)
def test_parse_duration(text: str, expected: float) -> None:
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "2", "2 s", "s", "2sec", "-1s", "2d", "ms"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("red", (255, 0, 0)),
        ("Green", (0, 128, 0)),
        ("rebeccapurple", (102, 51, 153)),
        ("#3498db", (52, 152, 219)),
        ("#FFF", (255, 255, 255)),
        ("rgb(255,0,0)", (255, 0, 0)),
        ("rgb( 1, 2 , 3 )", (1, 2, 3)),
    ],
)
def test_parse_colour(text: str, expected: tuple[int, int, int]) -> None:
    assert parse_colour(text) == expected


@pytest.mark.parametrize("text", ["blurple", "#12345", "#ggg", "rgb(256,0,0)", "rgb(1,2)", ""])
def test_parse_colour_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="colour"):
        parse_colour(text)
