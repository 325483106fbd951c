"""Host file names of guest applications are injective (issue 15, item 3): VM ``a`` with
``b-c.desktop`` and VM ``a-b`` with ``c.desktop`` get two files, and no two distinct
(VM, file id) pairs ever share one."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmsilo.desktop.names import decode_part, decode_stem, encode_part, entry_name, entry_stem

_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
_VM = st.one_of(st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,12}[a-z0-9])?", fullmatch=True), _TEXT)
_FILE = st.one_of(st.from_regex(r"[A-Za-z0-9._-]{0,20}", fullmatch=True), _TEXT).map(
    lambda stem: stem + ".desktop")


def test_the_issues_pair_no_longer_collides() -> None:
    assert entry_name("a", "b-c.desktop") == "vmsilo-a-b-c.desktop"
    assert entry_name("a-b", "c.desktop") == "vmsilo-a_2Db-c.desktop"


@pytest.mark.parametrize(("vm", "file_id", "name"), [
    ("work", "xterm.desktop", "vmsilo-work-xterm.desktop"),
    ("term", "debian-xterm.desktop", "vmsilo-term-debian-xterm.desktop"),
    ("work", "org.gnome.Calculator.desktop", "vmsilo-work-org.gnome.Calculator.desktop"),
    ("work", "a b.desktop", "vmsilo-work-a_20b.desktop"),
    ("work", "a_20b.desktop", "vmsilo-work-a_5F20b.desktop"),
    ("work", "café.desktop", "vmsilo-work-caf_C3_A9.desktop"),
])
def test_names_read_as_before_where_they_can(vm: str, file_id: str, name: str) -> None:
    assert entry_name(vm, file_id) == name


@pytest.mark.parametrize(("file_id", "reason"), [
    ("x.desktop.bak", "does not end in"), ("é" * 100 + ".desktop", "too long")])
def test_unusable_file_ids_are_refused(file_id: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        entry_name("work", file_id)


@given(_VM, _FILE)
def test_names_decode_back_to_the_pair(vm: str, file_id: str) -> None:
    try:
        stem = entry_stem(vm, file_id)
    except ValueError:
        return  # too long: refused, never truncated into someone else's name
    assert decode_stem(stem) == (vm, file_id)
    assert len(stem.encode()) + len(".desktop.tmp") <= 255
    assert all(ch.isascii() and (ch.isalnum() or ch in "._-") for ch in stem)


@given(_VM, _FILE, _VM, _FILE)
def test_distinct_pairs_never_share_a_name(vm1: str, f1: str, vm2: str, f2: str) -> None:
    try:
        one, two = entry_name(vm1, f1), entry_name(vm2, f2)
    except ValueError:
        return
    assert (one == two) == ((vm1, f1) == (vm2, f2))


@given(_TEXT, st.booleans())
def test_parts_round_trip(text: str, keep_dash: bool) -> None:
    encoded = encode_part(text, keep_dash=keep_dash)
    assert decode_part(encoded) == text
    assert ("-" in encoded) == (keep_dash and "-" in text)
