"""Derived identities: fixed vectors, and properties over random VM sets."""

from __future__ import annotations

import hashlib
import ipaddress
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmsilo.config.derive import (
    DerivationError,
    LinkRequest,
    assign_ids,
    mac_address,
    pci_address,
    pci_slot,
    plan_netvm_links,
    tap_name,
)


def test_ids_from_three_in_name_order() -> None:
    assert assign_ids(["shopping", "banking", "personal"], {}) == {
        "banking": 3,
        "personal": 4,
        "shopping": 5,
    }


def test_explicit_ids_are_kept_and_skipped() -> None:
    assert assign_ids(["c", "a", "b", "d"], {"b": 4, "d": 3}) == {"a": 5, "b": 4, "c": 6, "d": 3}


@pytest.mark.parametrize(
    ("position", "slot", "address"),
    [(0, 22, "00:16.0"), (1, 23, "00:17.0"), (9, 31, "00:1f.0"), (14, 36, "00:24.0")],
)
def test_pci_slots(position: int, slot: int, address: str) -> None:
    assert pci_slot(position) == slot
    assert pci_address(slot) == address


@pytest.mark.parametrize(
    ("vm", "vm_id", "slot", "expected"),
    [
        ("banking", 3, 22, "banking-22"),
        ("bankingsupersecret", 3, 22, "bankingsupe3-22"),
        ("personal-mail1", 12, 22, "personal-m12-22"),
        ("abcdefghijkl", 3, 22, "abcdefghijkl-22"),  # exactly 15 characters: kept
        ("bankingsupe3", 4, 22, "bankingsupe4-22"),  # 15 characters ending in a digit: shortened
        ("abcdefghij1xyz", 3, 22, "abcdefghij_3-22"),  # kept prefix ends in a digit
    ],
)
def test_tap_name_vectors(vm: str, vm_id: int, slot: int, expected: str) -> None:
    assert tap_name(vm, vm_id, slot) == expected


def test_tap_name_rule_keeps_apart_the_upstream_collision() -> None:
    # Upstream's plain rule gives both of these "bankingsupe3-22".
    assert tap_name("bankingsupe3", 4, 22) != tap_name("bankingsupersecret", 3, 22)


def test_mac_vectors() -> None:
    assert mac_address("banking", "wan") == "52:3f:e2:0c:26:9e"
    assert mac_address("bankingsupersecret", "upstream") == "52:b2:0a:79:37:46"
    digest = hashlib.sha1(b"shopping-eth0").hexdigest()
    expected = "52:" + ":".join(digest[i : i + 2] for i in range(0, 10, 2))
    assert mac_address("shopping", "eth0") == expected


def test_netvm_links_in_order_skipping_pinned() -> None:
    links = plan_netvm_links(
        [
            LinkRequest("shopping", "sys-net"),
            LinkRequest("banking", "sys-net"),
            LinkRequest("work", "host", ipaddress.IPv4Network("10.200.0.2/31")),
            LinkRequest("games", "host"),
        ],
        ipaddress.IPv4Network("10.200.0.0/16"),
    )
    summary = [(k.netvm, k.client, str(k.subnet), k.bridge, k.pinned) for k in links]
    assert summary == [
        ("host", "games", "10.200.0.0/31", None, False),
        ("host", "work", "10.200.0.2/31", None, True),
        ("sys-net", "banking", "10.200.0.4/31", "vmsl-2", False),
        ("sys-net", "shopping", "10.200.0.6/31", "vmsl-3", False),
    ]
    assert links[2].netvm_cidr == "10.200.0.4/31"
    assert links[2].client_cidr == "10.200.0.5/31"


def test_netvm_range_exhausted() -> None:
    requests = [LinkRequest(f"vm{i}", "host") for i in range(3)]
    with pytest.raises(DerivationError, match="no free /31"):
        plan_netvm_links(requests, ipaddress.IPv4Network("10.0.0.0/31"))


_first = string.ascii_lowercase + string.digits
_rest = _first + "-"
vm_names = st.builds(
    lambda first, middle, last: first + middle + last,
    st.sampled_from(_first),
    st.text(_rest, max_size=30),
    st.sampled_from(_first),
)


@given(
    names=st.sets(vm_names, min_size=1, max_size=25),
    explicit=st.dictionaries(st.integers(0, 24), st.integers(3, 2**32 - 2), max_size=5),
    interfaces=st.integers(1, 15),
)
def test_tap_names_are_short_and_unique(
    names: set[str], explicit: dict[int, int], interfaces: int
) -> None:
    ordered = sorted(names)
    chosen: dict[str, int] = {}
    for index, vm_id in explicit.items():
        if index < len(ordered) and vm_id not in chosen.values():
            chosen[ordered[index]] = vm_id
    ids = assign_ids(ordered, chosen)
    taps = [
        tap_name(name, ids[name], pci_slot(position))
        for name in ordered
        for position in range(interfaces)
    ]
    assert all(1 <= len(tap) <= 15 for tap in taps)
    assert len(set(taps)) == len(taps)


@given(vm=vm_names, interface=st.text(string.ascii_letters + string.digits + "_-.", min_size=1))
def test_macs_are_locally_administered_unicast(vm: str, interface: str) -> None:
    mac = mac_address(vm, interface)
    first = int(mac.split(":")[0], 16)
    assert first & 0x01 == 0  # unicast
    assert first & 0x02 == 0x02  # locally administered
    assert len(mac.split(":")) == 6
