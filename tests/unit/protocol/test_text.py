"""clean_display_text: any string becomes one visible line; printable text is kept."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmsilo.protocol.text import clean_display_text

REMOVED_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}
# Text that survives untouched: every category but the removed ones.
printable = st.text(st.characters(blacklist_categories=tuple(REMOVED_CATEGORIES)))


@pytest.mark.parametrize(("untrusted", "expected"), [
    ("title\u2028[banking]", "title [banking]"),          # line separator (the issue's case)
    ("title\u2029[banking]", "title [banking]"),          # paragraph separator
    ("a\nb\r\nc\x85d\x0be\x0cf\x1cg", "a b  c d e f g"),  # every break str.splitlines knows
    ("\x1b[31mred\x1b[0m", " [31mred [0m"),               # terminal escapes lose their ESC
    ("abc\u202edcba", "abcdcba"),                         # right-to-left override
    ("\u2066x\u2069\u200e\u200f\u061c", "x"),             # isolates and marks
    ("pay\u200bpal\ufeff\u00ad\u2060", "paypal"),         # zero-width and invisible characters
    ("tag\U000e0041\U000e007f", "tag"),                   # tag characters
    ("lone \ud800 surrogate", "lone  surrogate"),
    ("café ünïcödé 日本語 🙂", "café ünïcödé 日本語 🙂"),
    ("", ""),
])
def test_instances(untrusted: str, expected: str) -> None:
    assert clean_display_text(untrusted, max_len=100) == expected


def test_max_len_counts_code_points() -> None:
    assert clean_display_text("日本語", max_len=2) == "日本"
    assert clean_display_text("a\u200bb\u200bc", max_len=2) == "ab"  # dropped ones do not count
    assert clean_display_text("abc", max_len=0) == ""
    with pytest.raises(ValueError, match="max_len"):
        clean_display_text("abc", max_len=-1)


@given(st.text(), st.integers(min_value=0, max_value=300))
def test_any_string_becomes_one_visible_line(untrusted: str, max_len: int) -> None:
    cleaned = clean_display_text(untrusted, max_len=max_len)
    assert len(cleaned) <= max_len
    assert len(cleaned.splitlines()) <= 1
    assert not {unicodedata.category(ch) for ch in cleaned} & REMOVED_CATEGORIES
    cleaned.encode("utf-8")  # never a lone surrogate
    assert clean_display_text(cleaned, max_len=max_len) == cleaned


@given(printable)
def test_printable_text_is_kept(text: str) -> None:
    assert clean_display_text(text, max_len=len(text)) == text
    assert clean_display_text(text, max_len=5) == text[:5]


@given(st.text(), st.text())
def test_cleaning_commutes_with_joining(a: str, b: str) -> None:
    # No character's fate depends on its neighbours: a guest cannot smuggle anything through
    # a split between two messages.
    big = 10_000
    assert clean_display_text(a + b, max_len=big) == (
        clean_display_text(a, max_len=big) + clean_display_text(b, max_len=big))
