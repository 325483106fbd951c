"""Window titles and app ids a VM sets: always marked with the VM, always one visible line."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmsilo.wayland.policy import MAX_APP_ID_BYTES, MAX_TITLE_BYTES, app_id, window_title


@pytest.mark.parametrize(("untrusted", "expected"), [
    ("Mail\u2028[banking] Online banking", "[work] Mail [banking] Online banking"),
    ("Mail\u2029x", "[work] Mail x"),
    ("Mail\nx\r\x85y", "[work] Mail x  y"),
    ("\u202eknab", "[work] knab"),
    ("a\u200bb\ufeffc\u2066d\u2069", "[work] abcd"),
    ("bad \udcff utf-8", "[work] bad  utf-8"),  # an invalid byte, as the wire decodes it
    ("\u200b\u200e", "[work]"),                 # nothing visible left: the mark alone
    ("[personal] Bank", "[work] [personal] Bank"),
    (None, "[work]"),
    ("", "[work]"),
])
def test_window_titles(untrusted: str | None, expected: str) -> None:
    assert window_title("work", untrusted) == expected


@pytest.mark.parametrize(("untrusted", "expected"), [
    ("org.example.Bank", "vmsilo-work-org.example.Bank"),
    ("org.ex\u200bample", "vmsilo-work-org.example"),
    ("a b\u2028c/d", "vmsilo-work-a_b_c_d"),
    ("\u200b", "vmsilo-work"),
    (None, "vmsilo-work"),
])
def test_app_ids(untrusted: str | None, expected: str) -> None:
    assert app_id("work", untrusted) == expected


@given(st.text())
def test_any_title_is_one_marked_line(untrusted: str) -> None:
    title = window_title("work", untrusted)
    assert title.startswith("[work]")
    assert len(title.splitlines()) == 1
    assert len(title.encode("utf-8")) <= MAX_TITLE_BYTES
    assert not {unicodedata.category(ch) for ch in title} & {"Cc", "Cf", "Cs", "Zl", "Zp"}


@given(st.text())
def test_any_app_id_is_marked_and_plain(untrusted: str) -> None:
    value = app_id("work", untrusted)
    assert value.startswith("vmsilo-work")
    assert len(value) <= MAX_APP_ID_BYTES
    assert all(ch.isascii() and (ch.isalnum() or ch in "._-") for ch in value)
