"""Atheris target for the encoders of values written into another grammar (issue 15): kernel
command-line words, QEMU option values, libfuse option groups, and the config validators
whose accepted values become kernel words.

    pip install atheris
    python fuzz/fuzz_encoders.py fuzz/corpus/encoders

The first input byte picks the encoder; the rest, as text, is the value (NUL-separated values
for a list of kernel words). A finding is any exception but the documented ``ValueError`` of
a refused value, or a round trip that does not give back its input:
``split(join(words)) == words``, ``parse(f"k={value(x)}") == [("k", x)]``,
``fuseopt.split(f"source={value(x)},cache=auto") == [f"source={x}", "cache=auto"]``, and a
nameserver, interface name or mount point that the config accepts is one kernel word that the
guest's decoder gives back. Without atheris installed, it runs the given corpus once.
"""

from __future__ import annotations

import ipaddress

from driver import run  # fuzz/driver.py: the script's directory is on sys.path

from vmsilo.config.fields import check_guest_mount_point, check_interface_name, check_nameserver
from vmsilo.hypervisor import qemuopt
from vmsilo.protocol import cmdline, netparams, shareparams
from vmsilo.shares import fuseopt


def _kernel_words(text: str) -> None:
    words = [w for w in text.split("\0") if cmdline.word_problem(w) is None]
    assert cmdline.split(cmdline.join(words)) == words
    for word in text.split("\0"):
        if cmdline.word_problem(word) is None:
            assert cmdline.split(word) == [word]


def _qemu(text: str) -> None:
    try:
        encoded = qemuopt.value(text)
    except ValueError:
        assert "\0" in text
        return
    assert qemuopt.parse(f"a=1,serial={encoded},b=2") == [("a", "1"), ("serial", text), ("b", "2")]


def _fuse(text: str) -> None:
    try:
        encoded = fuseopt.value(text)
    except ValueError:
        assert "\0" in text
        return
    assert fuseopt.split(f"source={encoded},cache=auto") == [f"source={text}", "cache=auto"]


def _validators(text: str) -> None:
    try:
        check_nameserver(text)
    except ValueError:
        pass
    else:
        words = netparams.GuestNetwork(nameservers=[ipaddress.ip_address(text)]).encode()
        decoded = netparams.decode(cmdline.join(words)).nameservers
        assert [str(ns) for ns in decoded] == [str(ipaddress.ip_address(text))]
    try:
        check_interface_name(text)
    except ValueError:
        pass
    else:
        iface = netparams.GuestInterface(text, "52:00:00:00:00:01", dhcp=True)
        decoded_ifaces = netparams.decode(
            cmdline.join(netparams.GuestNetwork(interfaces={text: iface}).encode())).interfaces
        assert list(decoded_ifaces) == [text]
    try:
        check_guest_mount_point(text)
    except ValueError:
        pass
    else:
        share = shareparams.GuestShare("docs", text, False)
        words = shareparams.GuestShares([share]).encode()
        assert shareparams.decode(cmdline.join(words)).shares == [share]


_TARGETS = (_kernel_words, _qemu, _fuse, _validators)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    text = data[1:].decode("utf-8", "surrogateescape")
    _TARGETS[data[0] % len(_TARGETS)](text)


def main() -> None:
    run(test_one_input)


if __name__ == "__main__":
    main()
