"""The guest's network files, rendered from the kernel command line: exact text for the
files networkd, udev, unbound and nftables read, and the whole ruleset checked by ``nft``
itself when it is installed (``nft -c`` parses without touching the kernel's rules)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from vmsilo.agent import netconf
from vmsilo.protocol.netparams import decode

CLIENT = (
    "vmsilo.ifname=upstream,52:5e:00:00:00:01 vmsilo.addr=upstream,10.200.0.3/31 "
    "vmsilo.route=upstream,0.0.0.0/0,10.200.0.2 vmsilo.dns=10.200.0.2"
)
NETVM = (
    "vmsilo.ifname=upstream,52:5e:00:00:00:10 vmsilo.addr=upstream,10.200.0.1/31 "
    "vmsilo.route=upstream,0.0.0.0/0,10.200.0.0 "
    "vmsilo.ifname=c1,52:5e:00:00:00:11 vmsilo.addr=c1,10.200.0.2/31 vmsilo.downstream=c1 "
    "vmsilo.ifname=c2,52:5e:00:00:00:12 vmsilo.addr=c2,10.200.0.4/31 vmsilo.downstream=c2 "
    "vmsilo.dns=192.0.2.53"
)


def test_a_client_gets_a_name_addresses_a_route_and_a_nameserver() -> None:
    files = netconf.render(decode(CLIENT))
    assert sorted(files) == [
        "/etc/resolv.conf",
        "/run/systemd/network/10-vmsilo-upstream.link",
        "/run/systemd/network/10-vmsilo-upstream.network",
    ]
    assert files["/run/systemd/network/10-vmsilo-upstream.link"] == (
        "[Match]\nMACAddress=52:5e:00:00:00:01\n\n[Link]\nName=upstream\n"
    )
    network = files["/run/systemd/network/10-vmsilo-upstream.network"]
    assert "RequiredForOnline=no" in network  # boot never waits on it
    assert "Address=10.200.0.3/31" in network
    assert "[Route]\nDestination=0.0.0.0/0\nGateway=10.200.0.2" in network
    assert "DHCP=no" in network and "LinkLocalAddressing=no" in network
    assert files["/etc/resolv.conf"] == "nameserver 10.200.0.2\n"


def test_dhcp_and_ipv6() -> None:
    network = decode(
        "vmsilo.ifname=wan,52:5e:00:00:00:01 vmsilo.dhcp=wan vmsilo.addr=wan,fd00::2/64 "
        "vmsilo.route=wan,::/0,fd00::1"
    )
    text = netconf.render(network)["/run/systemd/network/10-vmsilo-wan.network"]
    assert "DHCP=ipv4" in text and "LinkLocalAddressing=ipv6" in text
    assert "Address=fd00::2/64" in text and "Gateway=fd00::1" in text
    assert "/etc/resolv.conf" not in netconf.render(network)


def test_a_netvm_forwards_nats_and_resolves_for_its_clients_only() -> None:
    files = netconf.render(decode(NETVM))
    rules = files[netconf.NFT_RULESET]
    assert 'iifname "c1" ip saddr != { 10.200.0.3 } drop' in rules
    assert 'iifname "c2" ip saddr != { 10.200.0.5 } drop' in rules
    assert 'iifname { "c1", "c2" } oifname { "c1", "c2" } drop' in rules
    assert "policy drop" in rules  # nothing forwarded that is not allowed
    assert 'ip saddr { 10.200.0.3, 10.200.0.5 } oifname != { "c1", "c2" } masquerade' in rules
    unbound = files[netconf.UNBOUND_CONF]
    assert "access-control: 10.200.0.3/32 allow" in unbound
    assert "access-control: 10.200.0.5/32 allow" in unbound
    assert "access-control: 0.0.0.0/0 refuse" in unbound
    assert "forward-addr: 192.0.2.53" in unbound


def test_a_netvm_without_nameservers_resolves_recursively_and_validates() -> None:
    files = netconf.render(decode(NETVM.replace("vmsilo.dns=192.0.2.53", "")))
    unbound = files[netconf.UNBOUND_CONF]
    assert "forward-zone" not in unbound
    assert 'module-config: "validator iterator"' in unbound


def test_a_vm_without_downstream_links_is_no_netvm() -> None:
    files = netconf.render(decode(CLIENT))
    assert netconf.NFT_RULESET not in files and netconf.UNBOUND_CONF not in files


@pytest.mark.allow_subprocess
@pytest.mark.skipif(shutil.which("nft") is None, reason="nft is not installed")
def test_the_netvm_ruleset_parses(tmp_path: Path) -> None:
    ruleset = tmp_path / "netvm.nft"
    ruleset.write_text(netconf.render(decode(NETVM))[netconf.NFT_RULESET])
    result = subprocess.run(["nft", "-c", "-f", str(ruleset)], capture_output=True, text=True)
    # -c needs CAP_NET_ADMIN for the netlink cache; without it nft says so, not a syntax error.
    if result.returncode != 0 and "Operation not permitted" in result.stderr:
        pytest.skip("nft -c needs root")
    assert result.returncode == 0, result.stderr


def test_main_refuses_a_bad_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("vmsilo.addr=wan,10.0.0.2/24\n")
    assert netconf.main([str(cmdline)]) == 1
    assert "no vmsilo.ifname names interface 'wan'" in capsys.readouterr().err
