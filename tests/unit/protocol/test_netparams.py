"""The guest network words: what the host encodes is what the guest decodes, and anything
malformed is refused with the word that is wrong."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmsilo.protocol.netparams import (
    GuestInterface,
    GuestNetwork,
    GuestRoute,
    NetParamError,
    decode,
)


def _network() -> GuestNetwork:
    wan = GuestInterface(
        name="wan",
        mac="52:aa:bb:cc:dd:01",
        addresses=[ipaddress.ip_interface("10.0.0.2/24"), ipaddress.ip_interface("fd00::2/64")],
        routes=[
            GuestRoute(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_address("10.0.0.1")),
            GuestRoute(ipaddress.ip_network("::/0"), ipaddress.ip_address("fd00::1")),
        ],
    )
    lan = GuestInterface(name="c1", mac="52:aa:bb:cc:dd:02", dhcp=True, downstream=True)
    return GuestNetwork(
        interfaces={"wan": wan, "c1": lan},
        nameservers=[ipaddress.ip_address("1.1.1.1"), ipaddress.ip_address("2606:4700::1111")],
    )


def test_encoding_round_trips() -> None:
    network = _network()
    words = network.encode()
    assert words[0] == "vmsilo.ifname=wan,52:aa:bb:cc:dd:01"
    assert "vmsilo.route=wan,0.0.0.0/0,10.0.0.1" in words
    assert "vmsilo.downstream=c1" in words
    decoded = decode("console=ttyS0 quiet " + " ".join(words) + " vmsilo.name=x")
    assert decoded == network
    assert decoded.is_netvm


def test_other_words_are_ignored_and_ifname_may_come_last() -> None:
    words = _network().encode()
    names = [w for w in words if w.startswith("vmsilo.ifname=")]
    rest = [w for w in words if w not in names]
    text = " ".join(["ip=dhcp", *rest, "vmsilo.overlay=disk", *names])
    assert decode(text) == _network()


def test_an_empty_command_line_means_no_network() -> None:
    network = decode("console=ttyS0 quiet")
    assert network.interfaces == {} and network.nameservers == [] and not network.is_netvm


@pytest.mark.parametrize(
    ("word", "complaint"),
    [
        ("vmsilo.ifname=wan", "expected 2 comma-separated fields"),
        ("vmsilo.ifname=wan,52:aa:bb:cc:dd", "is not a MAC address"),
        ("vmsilo.ifname=../x,52:aa:bb:cc:dd:01", "is not an interface name"),
        ("vmsilo.ifname=averyveryverylongname,52:aa:bb:cc:dd:01", "is not an interface name"),
        ("vmsilo.addr=lan,10.0.0.2/24", "no vmsilo.ifname names interface 'lan'"),
        ("vmsilo.addr=wan,10.0.0.2", "has no prefix length"),
        ("vmsilo.addr=wan,10.0.0.300/24", "is not an IP address"),
        ("vmsilo.route=wan,0.0.0.0/0", "expected 3 comma-separated fields"),
        ("vmsilo.route=wan,0.0.0.0/0,fd00::1", "differ in IP version"),
        ("vmsilo.dns=one.one.one.one", "is not an IP address"),
        ("vmsilo.dhcp=wan,extra", "expected 1 comma-separated fields"),
    ],
)
def test_malformed_words_are_refused(word: str, complaint: str) -> None:
    with pytest.raises(NetParamError, match=complaint) as info:
        decode(f"vmsilo.ifname=wan,52:aa:bb:cc:dd:01 {word}")
    assert word.split("=", 1)[0] in str(info.value)


_KEYS = ["vmsilo.ifname=", "vmsilo.addr=", "vmsilo.route=", "vmsilo.dhcp=", "vmsilo.dns=",
         "vmsilo.downstream=", "vmsilo.", "ip="]
_VALUE = st.text(alphabet="wan0,.:/-abcdef0123456789x", max_size=40)


@given(st.lists(st.tuples(st.sampled_from(_KEYS), _VALUE), max_size=8))
def test_decoding_any_words_either_parses_or_says_why(words: list[tuple[str, str]]) -> None:
    text = " ".join(key + value for key, value in words)
    try:
        network = decode(text)
    except NetParamError:
        return
    # What parsed encodes back to words that decode to the same settings.
    assert decode(" ".join(network.encode())) == network
