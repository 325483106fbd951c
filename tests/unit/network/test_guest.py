"""What each guest is told about its network, from fixed configs: netvm links on both ends,
a host link, vm-switch members' routes to each other's subnets, and the command-line cap."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmsilo.config import parse_config, resolve
from vmsilo.daemon.plan import launch_spec
from vmsilo.errors import UserError
from vmsilo.host.paths import Mode, Paths
from vmsilo.network.guest import guest_network, guest_params
from vmsilo.network.plan import plan_from_json, plan_to_json, plan_vm
from vmsilo.protocol.netparams import decode

NETVM = """
enable = true
user = "nobody"
[vms.gate.network]
isNetvm = true
netvm = "host"
nameservers = ["192.0.2.53"]
[vms.web.network]
netvm = "gate"
[vms.mail.network]
netvm = "gate"
nameservers = ["9.9.9.9"]
"""

SWITCH = """
enable = true
user = "nobody"
[vms.a.network.interfaces.sw]
type = "vm-switch"
addresses = ["10.5.0.2/24"]
vmNetwork = { name = "office", routes = ["192.168.7.0/24"] }
[vms.b.network.interfaces.sw]
type = "vm-switch"
addresses = ["10.5.0.3/24"]
vmNetwork = { name = "office" }
[vms.c.network.interfaces.sw]
type = "vm-switch"
addresses = ["10.6.0.3/24"]
vmNetwork = { name = "elsewhere" }
"""


def test_a_netvm_is_told_its_uplink_and_its_clients_links() -> None:
    resolved = resolve(parse_config(NETVM))
    network = guest_network(resolved, "gate")
    assert sorted(network.interfaces) == ["mail", "upstream", "web"]
    assert network.interfaces["web"].downstream and network.interfaces["mail"].downstream
    assert not network.interfaces["upstream"].downstream  # its link to the host
    upstream = network.interfaces["upstream"]
    assert [str(r.destination) for r in upstream.routes] == ["0.0.0.0/0"]
    assert [str(ns) for ns in network.nameservers] == ["192.0.2.53"]


def test_a_client_resolves_through_its_netvm_unless_it_names_nameservers() -> None:
    resolved = resolve(parse_config(NETVM))
    web = guest_network(resolved, "web")
    gate_end = resolved.vms["gate"].interfaces["web"].addresses[0].split("/")[0]
    assert [str(ns) for ns in web.nameservers] == [gate_end]
    assert [str(r.via) for r in web.interfaces["upstream"].routes] == [gate_end]
    assert [str(ns) for ns in guest_network(resolved, "mail").nameservers] == ["9.9.9.9"]


def test_the_words_carry_the_mac_the_vmm_gives_the_nic() -> None:
    resolved = resolve(parse_config(NETVM))
    words = guest_params(resolved, "web")
    mac = resolved.vms["web"].interfaces["upstream"].mac
    assert f"vmsilo.ifname=upstream,{mac}" in words
    assert decode(" ".join(words)) == guest_network(resolved, "web")


def test_vm_switch_members_route_to_each_others_subnets() -> None:
    resolved = resolve(parse_config(SWITCH))
    b_routes = guest_network(resolved, "b").interfaces["sw"].routes
    assert [(str(r.destination), str(r.via)) for r in b_routes] == [("192.168.7.0/24", "10.5.0.2")]
    assert guest_network(resolved, "a").interfaces["sw"].routes == []  # its own subnet
    assert guest_network(resolved, "c").interfaces["sw"].routes == []  # another network


def test_vm_switch_ports_are_taps_in_the_networks_bridge() -> None:
    resolved = resolve(parse_config(SWITCH))
    (tap,) = plan_vm(resolved, "a").taps
    assert tap.name == resolved.vms["a"].interfaces["sw"].tap_name
    assert tap.bridge == "vmsw-office"
    assert tap.neighbours == ("10.5.0.2",)  # the bridge answers ARP for it


def test_a_plan_survives_its_json_record() -> None:
    for config, vm in ((NETVM, "gate"), (SWITCH, "a")):
        plan = plan_vm(resolve(parse_config(config)), vm)
        assert plan_from_json(plan_to_json(plan)) == plan


def test_a_command_line_over_the_kernels_limit_is_refused(tmp_path: Path) -> None:
    addresses = ", ".join(f'"10.9.{i // 250}.{i % 250 + 1}/16"' for i in range(120))
    config = parse_config(
        f"""
enable = true
user = "nobody"
[vms.big]
kernel = "/boot/vmlinuz"
rootDisk = {{ path = "/var/lib/big.img" }}
network.interfaces.lan = {{ tap = {{}}, addresses = [{addresses}] }}
"""
    )
    resolved = resolve(config)
    paths = Paths.under(tmp_path, Mode.SYSTEM)
    with pytest.raises(UserError, match=r"vms\.big: its kernel command line would be \d+ bytes"):
        launch_spec(resolved.vms["big"], None, paths,
                    guest_network=tuple(guest_params(resolved, "big")))
