"""Resolution of the example config: ids, slots, TAPs, MACs, links and the JSON document."""

from __future__ import annotations

import json
from pathlib import Path

from vmsilo.config import parse_config, resolve

EXAMPLE = Path(__file__).parent / "example.toml"


def test_example_resolves_to_fixed_values() -> None:
    resolved = resolve(parse_config(EXAMPLE.read_text()))
    assert {name: vm.id for name, vm in resolved.vms.items()} == {
        "banking": 3,
        "personal": 4,
        "shopping": 5,
        "sys-net": 6,
    }
    assert all(vm.cid == vm.id for vm in resolved.vms.values())
    banking = resolved.vms["banking"].interfaces["upstream"]
    assert (banking.pci_address, banking.tap_name, banking.bridge) == (
        "00:16.0",
        "banking-22",
        "vmsl-0",
    )
    assert banking.addresses == ["10.200.0.1/31"]
    assert banking.routes == {"0.0.0.0/0": "10.200.0.0"}
    assert resolved.vms["banking"].nameservers == ["10.200.0.0"]
    sys_net = resolved.vms["sys-net"].interfaces
    assert list(sys_net) == ["banking", "shopping"]
    assert sys_net["shopping"].pci_address == "00:17.0"
    assert sys_net["shopping"].tap_name == "sys-net-23"
    assert sys_net["shopping"].addresses == ["10.200.0.2/31"]
    assert sys_net["shopping"].bridge == resolved.vms["shopping"].interfaces["upstream"].bridge
    assert resolved.vms["personal"].interfaces == {}
    assert resolved.vms["personal"].mount_points == {"documents": "/home/user/Documents"}


def test_host_netvm_link_puts_the_gateway_on_the_tap() -> None:
    config = parse_config(
        'user = "alice"\n[vms.web]\nnetwork.netvm = "host"\nnetwork.nameservers = ["1.1.1.1"]\n'
        '[vms.mail]\nnetwork.netvm = "host"\nnetwork.netvmSubnet = "10.200.0.0/31"\n'
    )
    resolved = resolve(config)
    mail = resolved.vms["mail"].interfaces["upstream"]
    web = resolved.vms["web"].interfaces["upstream"]
    assert (mail.host_address, mail.addresses, mail.bridge) == (
        "10.200.0.0/31",
        ["10.200.0.1/31"],
        None,
    )
    assert (web.host_address, web.addresses) == ("10.200.0.2/31", ["10.200.0.3/31"])
    assert resolved.vms["web"].nameservers == ["1.1.1.1"]
    assert resolved.vms["mail"].nameservers == []


def test_configured_interfaces_sort_with_links_and_keep_overrides() -> None:
    config = parse_config(
        'user = "alice"\n[vms.sys-net]\nnetwork.isNetvm = true\n'
        '[vms.sys-net.network.interfaces.wan]\ntap = { name = "uplink0", hostAddress = '
        '"10.0.0.254/24" }\nmacAddress = "52:AA:BB:CC:DD:EE"\naddresses = ["10.0.0.1/24"]\n'
        '[vms.alpha]\nnetwork.netvm = "sys-net"\n'
    )
    interfaces = resolve(config).vms["sys-net"].interfaces
    assert list(interfaces) == ["alpha", "wan"]
    wan = interfaces["wan"]
    assert (wan.pci_address, wan.tap_name, wan.mac, wan.host_address) == (
        "00:17.0",
        "uplink0",
        "52:aa:bb:cc:dd:ee",
        "10.0.0.254/24",
    )


def test_json_has_input_shape_defaults_and_derived_values() -> None:
    document = json.loads(resolve(parse_config(EXAMPLE.read_text())).to_json())
    assert document["netvmRange"] == "10.200.0.0/16"
    assert document["vmsilo-balloond"]["pollInterval"] == "2s"
    banking = document["vms"]["banking"]
    assert (banking["id"], banking["cid"], banking["hypervisor"]) == (3, 3, "qemu")
    assert banking["rootOverlay"] == {"type": "raw", "size": "10G"}
    upstream = banking["network"]["interfaces"]["upstream"]
    assert upstream["pciAddress"] == "00:16.0"
    assert upstream["tap"]["name"] == "banking-22"
    assert upstream["macAddress"].startswith("52:")
    assert upstream["link"]["clientAddress"] == "10.200.0.1/31"
    assert upstream["link"]["netvmAddress"] == "10.200.0.0/31"
    assert document["vms"]["sys-net"]["gpu"]["wayland"] is False
    assert document["vms"]["shopping"]["sound"] == {"playback": True, "capture": False}
    assert document["vms"]["personal"]["guestConfig"][0]["enableUnits"] == ["cups.service"]
    assert document["netvmLinks"][1]["client"] == "shopping"
