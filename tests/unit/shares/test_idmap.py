"""virtiofsd's user-namespace maps: the base block map, upstream's uidMap/gidMap laid over it,
translateUid/translateGid folded in for the C virtiofsd, and every value that would let a
guest own privileged host ids (or that the kernel would refuse) refused with the option."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmsilo.host.ids import VMM_OFFSET, IdMapLine, block_start, guest_id_map, vmm_id
from vmsilo.shares.idmap import (
    ALL_BLOCKS_END,
    MAX_LINES,
    IdMapError,
    IdOptions,
    namespace_map,
    normalise,
    overlay,
    parse_id_map,
    parse_translation,
    render,
    unsupported_translation,
)

VM = 3
B = block_start(VM)
DESKTOP = 1000  # a desktop user whose id equals the guest user's
NOBODY = 65534


def host_of(lines: tuple[IdMapLine, ...], guest: int) -> int | None:
    """What the kernel does with namespace id ``guest``."""
    for line in lines:
        if line.inside <= guest < line.inside + line.count:
            return line.outside + guest - line.inside
    return None


def uids(id_map: str | None = None, translation: str | None = None, flavour: str = "qemu",
         desktop: int = NOBODY) -> tuple[IdMapLine, ...]:  # fmt: skip
    return namespace_map(VM, desktop, IdOptions(id_map, translation), flavour)  # type: ignore[arg-type]


def test_without_options_the_map_is_the_vms_block_with_user_as_the_desktop_user() -> None:
    lines = uids()
    assert lines == normalise(guest_id_map(VM, NOBODY))
    assert render(lines) == f"0 {B} 1000\n1000 {NOBODY} 1\n1001 {B + 1001} {VMM_OFFSET - 1001}\n"
    assert host_of(lines, 0) == B and host_of(lines, 1000) == NOBODY
    assert host_of(lines, 65534) == B + 65534
    assert host_of(lines, 65535) is None  # the VMM's id is never a guest's
    assert vmm_id(VM) not in {host_of(lines, g) for g in range(0, 70000, 7)}


def test_a_desktop_user_of_uid_1000_is_one_line_with_its_neighbours() -> None:
    lines = uids(desktop=DESKTOP)
    assert host_of(lines, 1000) == 1000 and host_of(lines, 999) == B + 999


def test_uid_map_wins_over_the_block_and_the_block_gives_way_on_both_sides() -> None:
    # Guest root as the desktop user (upstream's example for a rootless virtiofsd).
    lines = uids(":0:65534:1:")
    assert host_of(lines, 0) == NOBODY
    assert host_of(lines, 1000) is None  # its host id went to guest 0
    assert host_of(lines, 1) == B + 1
    # A range of ordinary host ids (a subuid range, say).
    lines = uids(":2000:200000:10:")
    assert [host_of(lines, g) for g in (1999, 2000, 2009, 2010)] == [
        B + 1999, 200000, 200009, B + 2010]  # fmt: skip
    # Inside this VM's own block: the guest id that had that host id loses it.
    lines = uids(f":0:{B + 5}:1:")
    assert host_of(lines, 0) == B + 5 and host_of(lines, 5) is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (":0:0:1:", "host id 0 is root"),
        (":0:0:65536:", "host id 0 is root"),
        (":5:5:1:", "host id 5 is a system id"),
        (":0:990:20:", "host id 990 is a system id"),
        (f":0:{block_start(4)}:10:", "block of VM id 4"),
        (f":0:{vmm_id(VM)}:1:", "block of VM id 3"),  # this VM's VMM
        (f":0:{B - 5}:10:", "block of VM id 2"),
        (f":0:{ALL_BLOCKS_END - 1}:1:", "block of VM id 4095"),
        (":0:100000:0:", "a count of 0"),
        (":0:4294967290:10:", "passes the largest id"),
        ("0:100000:10", "write ':namespace_id:host_id:count:'"),
        (":0:100000:10", "write ':namespace_id:host_id:count:'"),
        (":0:x:10:", "write ':namespace_id:host_id:count:'"),
        (":0:1:2:3:", "write ':namespace_id:host_id:count:'"),
    ],
)
def test_uid_maps_that_would_give_a_guest_privileged_ids_are_refused(value: str,
                                                                     reason: str) -> None:
    with pytest.raises(IdMapError, match=reason) as caught:
        uids(value)
    assert caught.value.option == "uidMap"
    assert str(caught.value).startswith(f"uidMap = {value!r}: ")


def test_the_desktop_user_is_allowed_even_below_1000() -> None:
    lines = namespace_map(VM, 500, IdOptions(":0:500:1:"), "qemu")
    assert host_of(lines, 0) == 500


def test_gid_options_are_named_as_gid_options() -> None:
    with pytest.raises(IdMapError, match=r"^gidMap = ':0:6:1:': host id 6"):
        namespace_map(VM, 100, IdOptions(":0:6:1:", None, "gidMap", "translateGid"), "qemu")


def test_the_c_virtiofsd_gets_a_map_translation_folded_into_the_namespace_map() -> None:
    # Guest root's files become whatever guest user's were: the desktop user's.
    lines = uids(translation="map:0:1000:1")
    assert host_of(lines, 0) == NOBODY
    assert host_of(lines, 1000) is None  # the translation took its host id
    # A range: guest 5000.. take the host ids of namespace ids 999..1001.
    lines = uids(translation="map:5000:999:3")
    assert [host_of(lines, g) for g in (5000, 5001, 5002)] == [B + 999, NOBODY, B + 1001]
    assert host_of(lines, 999) is None and host_of(lines, 1000) is None
    # A translation's target beyond the map maps nothing: those guest ids are refused...
    lines = uids(translation="map:5:70000:1")
    assert host_of(lines, 5) is None
    # ...but virtiofsd itself runs as namespace id 0, which must stay mapped.
    with pytest.raises(IdMapError, match="guest's root id cannot be forbidden"):
        uids(translation="map:0:70000:1")


def test_forbid_guest_leaves_those_guest_ids_unmapped() -> None:
    lines = uids(translation="forbid-guest:1:999")
    assert host_of(lines, 1) is None and host_of(lines, 999) is None
    assert host_of(lines, 1000) == NOBODY and host_of(lines, 0) == B
    with pytest.raises(IdMapError, match="guest's root id cannot be forbidden"):
        uids(translation="forbid-guest:0:1000")


def test_translations_the_namespace_cannot_express_are_refused_for_the_c_flavour() -> None:
    for value in ("guest:0:1000:1", "host:1000:0:1", "squash-guest:0:1000:4294967295",
                  "squash-host:0:1000:10"):  # fmt: skip
        assert unsupported_translation(value, "qemu")
        assert not unsupported_translation(value, "rust")
        with pytest.raises(IdMapError, match="cannot express"):
            uids(translation=value)
    assert not unsupported_translation("map:0:1000:1", "qemu")
    assert not unsupported_translation(None, "qemu")


def test_the_rust_flavour_translates_itself_so_its_map_is_untouched() -> None:
    assert uids(translation="squash-guest:0:1000:4294967295", flavour="rust") == uids()
    with pytest.raises(IdMapError, match="translateUid"):
        uids(translation="squash-guest:0:x:1", flavour="rust")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("map:0:1000", "write '<type>:<source base>:<target base>:<count>'"),
        ("swap:0:1000:1", "write '<type>"),
        ("map:0:-1:1", "decimal"),
        ("map:0:1000:0", "a count of 0"),
        ("forbid-guest:0:1:1000", "write 'forbid-guest:<guest base>:<count>'"),
        ("map:4294967290:0:10", "passes the largest id"),
    ],
)
def test_malformed_translations_are_refused(value: str, reason: str) -> None:
    with pytest.raises(IdMapError, match=reason):
        parse_translation("translateUid", value)


def test_parse_accepts_virtiofsd_delimiters() -> None:
    assert parse_id_map("uidMap", "/0/100000/10/") == IdMapLine(0, 100000, 10)
    t = parse_translation("translateGid", "forbid-guest:0:1000")
    assert (t.kind, t.source, t.target, t.count) == ("forbid-guest", 0, None, 1000)


def test_overlay_and_normalise() -> None:
    lower = [IdMapLine(0, 100, 10), IdMapLine(10, 110, 10)]
    assert normalise(lower) == (IdMapLine(0, 100, 20),)  # neighbours merged
    upper = [IdMapLine(5, 300, 2), IdMapLine(50, 112, 1)]
    assert normalise(overlay(lower, upper)) == (
        IdMapLine(0, 100, 5), IdMapLine(5, 300, 2), IdMapLine(7, 107, 5),
        IdMapLine(13, 113, 7), IdMapLine(50, 112, 1))  # fmt: skip
    with pytest.raises(AssertionError, match="overlap on the outside"):
        normalise([IdMapLine(0, 100, 10), IdMapLine(20, 105, 1)])
    with pytest.raises(AssertionError, match="kernel takes"):
        normalise([IdMapLine(i * 2, 10**6 + i * 2, 1) for i in range(MAX_LINES + 1)])


ids = st.integers(min_value=0, max_value=2**32 - 2)


@given(
    inside=ids, outside=ids, count=st.integers(min_value=1, max_value=2**20),
    kind=st.sampled_from(["map", "forbid-guest", None]), source=ids, target=ids,
    tcount=st.integers(min_value=1, max_value=2**17),
    desktop=st.sampled_from([1000, 1234, 65534, 4000000000]),
)  # fmt: skip
def test_any_accepted_options_give_a_map_the_kernel_takes_and_no_privileged_id(
    inside: int, outside: int, count: int, kind: str | None, source: int, target: int,
    tcount: int, desktop: int,
) -> None:  # fmt: skip
    id_map = f":{inside}:{outside}:{count}:"
    translation = None
    if kind == "map":
        translation = f"map:{source}:{target}:{tcount}"
    elif kind == "forbid-guest":
        translation = f"forbid-guest:{source}:{tcount}"
    try:
        lines = namespace_map(VM, desktop, IdOptions(id_map, translation), "qemu")
    except IdMapError:
        return
    assert 0 < len(lines) <= MAX_LINES
    for line in lines:
        first, last = line.outside, line.outside + line.count - 1
        assert last < 2**32 - 1
        assert first >= 1000 or first == last == desktop
        in_blocks = first < ALL_BLOCKS_END and last >= block_start(0)
        assert not in_blocks or (first >= B and last < B + VMM_OFFSET)
