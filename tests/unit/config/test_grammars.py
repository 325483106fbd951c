"""Values that reach other grammars (issue 15, items 15-16): the encoders' round trips
(kernel words, QEMU option values, libfuse option groups; the real QEMU and C virtiofsd read
them in tests/integration/hypervisor/test_qemuopt.py and tests/integration/shares/
test_fuseopt.py), every accepted network value staying one kernel word, and socket paths
that fit in ``sun_path``."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmsilo.config import ConfigError, grammars, parse_config
from vmsilo.config.checks import HOME_TAG
from vmsilo.config.fields import (
    check_guest_mount_point,
    check_interface_name,
    check_ip_address,
    check_ipv6_address,
    check_ipv6_interface,
    check_ipv6_network,
    check_nameserver,
)
from vmsilo.host.paths import Mode, Paths
from vmsilo.hypervisor import qemuopt
from vmsilo.hypervisor.spec import RuntimeLayout
from vmsilo.protocol import cmdline, netparams, shareparams
from vmsilo.shares import fuseopt, runner

PRINTABLE = st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters='"')


@st.composite
def kernel_words(draw: st.DrawFn) -> str:
    """A word: unquoted runs without spaces, and quoted runs that may hold spaces."""
    parts = draw(
        st.lists(
            st.one_of(
                st.text(PRINTABLE, min_size=1, max_size=8),
                st.text(st.one_of(PRINTABLE, st.just(" ")), max_size=8).map(lambda t: f'"{t}"'),
            ),
            min_size=1,
            max_size=4,
        )
    )
    return "".join(parts)


# ---------------------------------------------------------------- kernel command line


@settings(max_examples=500)
@given(st.lists(kernel_words(), max_size=8))
def test_kernel_words_round_trip(words: list[str]) -> None:
    line = cmdline.join(words)
    assert cmdline.split(line) == words


@settings(max_examples=500)
@given(st.text())
def test_a_word_the_checker_accepts_is_exactly_one_kernel_word(text: str) -> None:
    if cmdline.word_problem(text) is None:
        assert cmdline.split(text) == [text]
        assert cmdline.split(f"a {text} b") == ["a", text, "b"]


@pytest.mark.parametrize(
    "word",
    [
        "fe80::1%eth0 systemd.unit=rescue.target",  # the issue's instance
        "a\nb",
        "a\tb",
        "caf\u00e9",  # UTF-8's second byte 0xA0 is white space to the kernel
        "x\u00a0y",
        'dyndbg="a',
        "",
    ],
)
def test_words_that_are_not_one_word_are_refused(word: str) -> None:
    with pytest.raises(ValueError, match="not one kernel command-line word"):
        cmdline.join(["quiet", word])


def test_quoted_spaces_stay_in_one_word() -> None:
    assert cmdline.split('quiet dyndbg="file a.c +p" x') == ["quiet", 'dyndbg="file a.c +p"', "x"]


# Addresses shaped like real ones, with whatever a user (or an attacker's config) appends.
SUFFIXES = st.one_of(st.text(max_size=12), st.sampled_from(["eth0", "wan x=y", "a,b", "x\ny"]))
V6 = st.ip_addresses(v=6).map(str)
V6_SCOPED = st.builds(lambda a, s: f"{a}%{s}", V6, SUFFIXES)


@settings(max_examples=500)
@given(st.one_of(V6, V6_SCOPED, st.ip_addresses(v=4).map(str), st.text(max_size=20)))
def test_an_accepted_nameserver_is_one_dns_word_and_decodes_to_itself(value: str) -> None:
    try:
        check_nameserver(value)
    except ValueError:
        return
    network = netparams.GuestNetwork(nameservers=[ipaddress.ip_address(value)])
    words = network.encode()
    assert len(words) == 1 and cmdline.word_problem(words[0]) is None
    assert [str(ns) for ns in netparams.decode(cmdline.join(words)).nameservers] == [
        str(ipaddress.ip_address(value))
    ]


@settings(max_examples=300)
@given(V6_SCOPED, st.integers(0, 128))
def test_scoped_addresses_are_refused_where_nothing_carries_them(
    address: str, prefix: int
) -> None:
    for check, value in (
        (check_ipv6_address, address),
        (check_ip_address, address),
        (check_ipv6_interface, f"{address}/{prefix}"),
        (check_ipv6_network, f"{address}/{prefix}"),
    ):
        with pytest.raises(ValueError, match=r"scope id|not an"):
            check(value)


def test_a_nameserver_may_name_its_interface() -> None:
    check_nameserver("fe80::1%eth0")
    with pytest.raises(ValueError, match="not an interface name"):
        check_nameserver("fe80::1%eth0 systemd.unit=rescue.target")


@settings(max_examples=500)
@given(st.text(max_size=16))
def test_an_accepted_interface_name_is_one_the_guest_decodes(name: str) -> None:
    try:
        check_interface_name(name)
    except ValueError:
        return
    words = netparams.GuestNetwork(
        interfaces={name: netparams.GuestInterface(name, "52:00:00:00:00:01", dhcp=True)}
    ).encode()
    decoded = netparams.decode(cmdline.join(words))
    assert list(decoded.interfaces) == [name] and decoded.interfaces[name].dhcp


@settings(max_examples=500)
@given(st.one_of(st.text(max_size=16), st.text(max_size=16).map(lambda t: "/mnt/" + t)))
def test_an_accepted_mount_point_is_one_the_guest_decodes(mount_point: str) -> None:
    try:
        check_guest_mount_point(mount_point)
    except ValueError:
        return
    words = shareparams.GuestShares([shareparams.GuestShare("docs", mount_point, True)]).encode()
    decoded = shareparams.decode(cmdline.join(words))
    assert decoded.shares == [shareparams.GuestShare("docs", mount_point, True)]


# ---------------------------------------------------------------- QEMU option strings


@settings(max_examples=500)
@given(st.text().filter(lambda t: "\0" not in t))
def test_qemu_option_values_round_trip(text: str) -> None:
    options = f"virtio-blk-device,drive=disk0,serial={qemuopt.value(text)},logical_block_size=512"
    assert qemuopt.parse(options) == [
        ("virtio-blk-device", ""),
        ("drive", "disk0"),
        ("serial", text),
        ("logical_block_size", "512"),
    ]


def test_qemu_option_values_refuse_nul() -> None:
    with pytest.raises(ValueError, match="NUL"):
        qemuopt.value("a\0b")


# ---------------------------------------------------------------- virtiofsd (C) option groups


@settings(max_examples=500)
@given(st.text().filter(lambda t: "\0" not in t))
def test_fuse_option_values_round_trip(text: str) -> None:
    group = f"source={fuseopt.value(text)},cache=auto,no_xattr"
    assert fuseopt.split(group) == [f"source={text}", "cache=auto", "no_xattr"]


# ---------------------------------------------------------------- unix socket paths


def test_socket_names_are_the_ones_the_host_uses() -> None:
    layout = RuntimeLayout(Path("/r"), Path("/l"))
    sockets = {layout.control_socket, layout.balloon_socket, layout.channel_socket,
               layout.console_socket}  # fmt: skip
    assert {p.name for p in sockets} == set(grammars.VM_SOCKETS)
    shared = runner.share_directory(Path("/r"), "docs") / runner.SOCKET
    assert str(shared) == grammars.share_socket_path("", "r", "docs")


def test_run_dirs_are_the_ones_paths_computes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VMSILO_ROOT", raising=False)
    runs = dict((mode, path) for mode, path in reversed(grammars.RUN_DIRS))
    assert str(Paths.for_mode(Mode.SYSTEM).run_dir) == runs["system mode"]
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/4294967294")
    assert str(Paths.for_mode(Mode.USER).run_dir) == runs["user mode"]
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    fallback = str(Paths.for_mode(Mode.USER).run_dir)
    assert fallback == runs["user mode without XDG_RUNTIME_DIR"].replace(
        "4294967294", str(os.getuid())
    )


def _config(vm: str, tag: str | None, shared_home: bool = False) -> str:
    text = f'user = "alice"\n[vms.{vm}]\nsharedHome = {"true" if shared_home else "false"}\n'
    if tag is not None:
        text += f'sharedDirectories.{tag}.path = "/srv/docs"\n'
    return text


def test_the_issues_name_and_tag_are_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(_config("a" * 55, "t" * 36))
    (problem,) = caught.value.problems
    assert "138 bytes, over the 107" in problem and "at most 60 characters" in problem


@pytest.mark.parametrize("vm_length", [1, 24, 49, 59])
def test_the_longest_name_and_tag_that_fit_are_accepted(vm_length: int) -> None:
    room = grammars.SUN_PATH_MAX - len(grammars.share_socket_path(
        grammars.RUN_DIRS[2][1], "", "").encode())  # fmt: skip
    tag_length = min(36, room - vm_length)
    parse_config(_config("v" * vm_length, "t" * tag_length))
    if tag_length < 36:
        with pytest.raises(ConfigError, match="socket"):
            parse_config(_config("v" * vm_length, "t" * (tag_length + 1)))


def test_the_shared_home_counts_too() -> None:
    room = grammars.SUN_PATH_MAX - len(grammars.share_socket_path(
        grammars.RUN_DIRS[2][1], "", HOME_TAG).encode())  # fmt: skip
    parse_config(_config("h" * room, None, shared_home=True))
    with pytest.raises(ConfigError, match="sharedHome"):
        parse_config(_config("h" * (room + 1), None, shared_home=True))


def test_the_limit_is_the_kernels(tmp_path: Path) -> None:
    """A path of SUN_PATH_MAX bytes binds; one byte more does not."""
    base = str(tmp_path) + "/"
    if len(base) >= grammars.SUN_PATH_MAX - 1:
        pytest.skip(f"the temporary directory {base} is too long already")
    for length, fits in ((grammars.SUN_PATH_MAX, True), (grammars.SUN_PATH_MAX + 1, False)):
        path = base + "s" * (length - len(base))
        with socket.socket(socket.AF_UNIX) as sock:
            if fits:
                sock.bind(path)
            else:
                with pytest.raises(OSError):
                    sock.bind(path)


def test_a_vm_without_shares_may_have_the_longest_name() -> None:
    parse_config(_config("a" * 63, None))
    assert len(grammars.longest_socket_path("a" * 63, []).encode()) <= grammars.SUN_PATH_MAX


# ---------------------------------------------------------------- the issue's instance


def test_the_issues_nameserver_is_refused_with_its_path() -> None:
    text = (
        'user = "alice"\n[vms.work]\n'
        'network.nameservers = ["fe80::1%eth0 systemd.unit=rescue.target"]\n'
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    (problem,) = caught.value.problems
    assert problem.startswith("vms.work.network.nameservers[0]: ")


def test_a_share_path_with_commas_is_accepted() -> None:
    """It is encoded where it is written (fuseopt), not refused."""
    config = parse_config(_config("work", "docs").replace("/srv/docs", "/srv/a,b"))
    assert config.vms["work"].shared_directories["docs"].path == "/srv/a,b"
