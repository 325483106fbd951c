"""The network plan for fixed configs: the README example, a host netvm with NAT, the old
``hostNetworking.nat`` TAP, user bridges and vm-switch networks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vmsilo.config import parse_config, resolve
from vmsilo.errors import UserError
from vmsilo.network import Bridge, NetworkPlan, TapDevice, plan_all, plan_vm
from vmsilo.network.plan import FqCodel, vm_switch_bridge_name

EXAMPLE = Path(__file__).parents[1] / "config" / "example.toml"


def _example() -> Any:
    return resolve(parse_config(EXAMPLE.read_text()))


def _rules(plan: NetworkPlan, family: str) -> list[tuple[str, list[Any]]]:
    (table,) = [t for t in plan.tables if t.family == family]
    return [(i["rule"]["chain"], i["rule"]["expr"]) for i in table.body if "rule" in i]


def _value(value: Any) -> Any:
    if isinstance(value, dict) and "prefix" in value:
        return f"{value['prefix']['addr']}/{value['prefix']['len']}"
    return value


def _text(expr: list[Any]) -> str:
    """A compact rendering of one rule, enough to read the tests."""
    parts = []
    for item in expr:
        if "match" in item:
            m = item["match"]
            left = m["left"]
            name = (
                left.get("meta", {}).get("key")
                or (
                    left.get("payload")
                    and f"{left['payload']['protocol']} {left['payload']['field']}"
                )
                or "ct state"
            )
            right = _value(m["right"])
            if isinstance(right, dict) and "set" in right:
                right = sorted(str(_value(r)) for r in right["set"])
            parts.append(f"{name} {m['op']} {right}")
        else:
            parts.append(next(iter(item)))
    return " ".join(parts)


def test_example_client_gets_a_link_tap_in_its_bridge_with_anti_spoofing() -> None:
    plan = plan_vm(_example(), "banking")
    assert plan.taps == (
        TapDevice(
            name="banking-22",
            owner="root",  # only root may attach; the VMM gets its descriptor
            vm="banking",
            interface="upstream",
            guest_mac="52:be:64:bf:cc:65",
            bridge="vmsl-0",
        ),
    )
    assert plan.bridges == (Bridge("vmsl-0", "netvm-link"),)
    assert plan.required_bridges == () and plan.forwarding_interfaces == ()
    assert [t.key() for t in plan.tables] == [("bridge", "vmsilo-banking")]
    assert [(chain, _text(expr)) for chain, expr in _rules(plan, "bridge")] == [
        ("forward", "iifname == banking-22 ether saddr != 52:be:64:bf:cc:65 drop"),
        ("forward", "iifname == banking-22 ether type != ['arp', 'ip'] drop"),
        ("forward", "iifname == banking-22 arp saddr ether != 52:be:64:bf:cc:65 drop"),
        ("forward", "iifname == banking-22 arp saddr ip != 10.200.0.1 drop"),
        ("forward", "iifname == banking-22 ip saddr != 10.200.0.1 drop"),
        ("input", "iifname == banking-22 drop"),
    ]


def test_example_netvm_gets_one_tap_per_client_checked_by_mac_only() -> None:
    plan = plan_vm(_example(), "sys-net")
    assert [(t.name, t.interface, t.bridge) for t in plan.taps] == [
        ("sys-net-22", "banking", "vmsl-0"),
        ("sys-net-23", "shopping", "vmsl-1"),
    ]
    assert plan.bridges == (Bridge("vmsl-0", "netvm-link"), Bridge("vmsl-1", "netvm-link"))
    # The netvm forwards the internet's packets, so their sources are anyone's.
    assert [_text(expr) for _, expr in _rules(plan, "bridge")] == [
        "iifname == sys-net-22 ether saddr != 52:1e:fb:79:5c:42 drop",
        "iifname == sys-net-23 ether saddr != 52:57:64:52:38:c2 drop",
        "iifname == sys-net-22 drop",
        "iifname == sys-net-23 drop",
    ]


def test_example_offline_vm_has_an_empty_plan_and_all_merges_every_vm() -> None:
    resolved = _example()
    assert plan_vm(resolved, "personal") == NetworkPlan()
    everything = plan_all(resolved)
    assert sorted(t.name for t in everything.taps) == [
        "banking-22",
        "shopping-22",
        "sys-net-22",
        "sys-net-23",
    ]
    assert everything.bridges == (Bridge("vmsl-0", "netvm-link"), Bridge("vmsl-1", "netvm-link"))
    assert sorted(t.name for t in everything.tables) == [
        "vmsilo-banking",
        "vmsilo-shopping",
        "vmsilo-sys-net",
    ]


def test_unknown_vm_is_a_user_error_naming_the_known_ones() -> None:
    with pytest.raises(UserError, match=r"'bankin' is not in the config \(VMs: banking, "):
        plan_vm(_example(), "bankin")


HOST_NAT = """
enable = true
user = "alice"
hostNetworking.nat = { enable = true, interface = "wlan0" }
[vms.web]
network.netvm = "host"
"""


def test_host_netvm_nats_out_of_the_uplink_and_refuses_new_connections_in() -> None:
    plan = plan_vm(resolve(parse_config(HOST_NAT)), "web")
    (tap,) = plan.taps
    assert (tap.name, tap.host_address, tap.bridge) == ("web-22", "10.200.0.0/31", None)
    assert plan.forwarding_interfaces == ("web-22", "wlan0")
    assert [t.key() for t in plan.tables] == [("inet", "vmsilo-web")]
    assert [(chain, _text(expr)) for chain, expr in _rules(plan, "inet")] == [
        ("input", "iifname == web-22 ct state in ['established', 'related'] accept"),
        ("input", "iifname == web-22 drop"),
        ("forward", "iifname == web-22 nfproto != ipv4 drop"),
        ("forward", "iifname == web-22 ip saddr != 10.200.0.1 drop"),
        ("forward", "iifname == web-22 oifname == wlan0 accept"),
        ("forward", "iifname == web-22 drop"),
        ("forward", "oifname == web-22 ct state in ['established', 'related'] accept"),
        ("forward", "oifname == web-22 drop"),
        ("postrouting", "ip saddr == 10.200.0.1 oifname == wlan0 masquerade"),
    ]
    chains = [i["chain"] for i in plan.tables[0].body if "chain" in i]
    assert [(c["name"], c["type"], c["hook"], c["prio"]) for c in chains] == [
        ("input", "filter", "input", -10),
        ("forward", "filter", "forward", -10),
        ("postrouting", "nat", "postrouting", 100),
    ]


def test_host_netvm_without_an_uplink_masquerades_out_of_anything_but_the_tap() -> None:
    plan = plan_vm(
        resolve(
            parse_config(
                HOST_NAT.replace('hostNetworking.nat = { enable = true, interface = "wlan0" }', "")
            )
        ),
        "web",
    )
    # Replies may come in on any interface, so all forward.
    assert plan.forwarding_interfaces == ("web-22", "all")
    texts = [_text(expr) for _, expr in _rules(plan, "inet")]
    assert "iifname == web-22 oifname != web-22 accept" in texts
    assert texts[-1] == "ip saddr == 10.200.0.1 oifname != web-22 masquerade"


OLD_STYLE = """
enable = true
user = "alice"
hostNetworking.nat = { enable = true, interface = "eth0" }
[vms.old.network.interfaces]
wan = { addresses = ["10.9.0.2/24", "10.9.0.3/24"], tap = { hostAddress = "10.9.0.1/24" } }
dhcp = { dhcp = true, tap = { hostAddress = "10.8.0.1/24", name = "olddhcp" } }
lan = { tap = { bridge = "br0" } }
"""


def test_old_style_nat_taps_and_user_bridges() -> None:
    plan = plan_vm(resolve(parse_config(OLD_STYLE)), "old")
    assert [(t.name, t.host_address, t.bridge) for t in plan.taps] == [
        ("olddhcp", "10.8.0.1/24", None),
        ("old-23", None, "br0"),
        ("old-24", "10.9.0.1/24", None),
    ]
    assert plan.required_bridges == ("br0",) and plan.bridges == ()
    texts = [_text(expr) for _, expr in _rules(plan, "inet")]
    # Without static addresses the guest may use its TAP's subnet (DHCP from elsewhere).
    assert "iifname == olddhcp ip saddr != 10.8.0.0/24 drop" in texts
    assert "iifname == old-24 ip saddr != ['10.9.0.2', '10.9.0.3'] drop" in texts
    assert not any("old-23" in t for t in texts)  # the user's bridge is the user's business


def test_host_address_without_nat_gets_no_rules() -> None:
    text = OLD_STYLE.replace("enable = true, interface", "enable = false, interface")
    plan = plan_vm(resolve(parse_config(text)), "old")
    assert plan.tables == () and plan.forwarding_interfaces == ()


SWITCH = """
enable = true
user = "alice"
[vms.a.network.interfaces.sw]
type = "vm-switch"
addresses = ["10.5.0.2/24"]
vmNetwork = { name = "office", routes = ["192.168.7.0/24"], receiveBroadcast = true }
[vms.b.network.interfaces.sw]
type = "vm-switch"
addresses = ["10.5.0.3/24"]
vmNetwork = { name = "office" }
"""


def test_vm_switch_ports_share_a_bridge_with_spoofing_and_broadcast_rules() -> None:
    resolved = resolve(parse_config(SWITCH))
    a, b = plan_vm(resolved, "a"), plan_vm(resolved, "b")
    assert a.bridges == b.bridges == (Bridge("vmsw-office", "vm-switch"),)
    assert (a.taps[0].name, b.taps[0].name) == ("a-22", "b-22")
    assert a.taps[0].fq_codel == FqCodel(
        target_us=5000, interval_us=100_000, memory_limit=2 * 1024 * 1024, quantum=1514
    )
    a_rules = [_text(expr) for _, expr in _rules(a, "bridge")]
    assert "iifname == a-22 ip saddr != ['10.5.0.2', '192.168.7.0/24'] drop" in a_rules
    assert not any(r.startswith("oifname") for r in a_rules)  # a receives broadcasts
    b_rules = [_text(expr) for _, expr in _rules(b, "bridge")]
    assert b_rules[-2] == (
        "oifname == b-22 ether type != arp pkttype == ['broadcast', 'multicast'] drop"
    )


def test_vm_switch_bridge_names_are_readable_or_hashed() -> None:
    assert vm_switch_bridge_name("office") == "vmsw-office"
    long_name = vm_switch_bridge_name("the-whole-office")
    assert long_name.startswith("vmsh-") and len(long_name) == 15
    assert vm_switch_bridge_name("Office Net") != vm_switch_bridge_name("office-net")


def test_rulesets_replace_and_remove_whole_tables() -> None:
    plan = plan_vm(resolve(parse_config(HOST_NAT)), "web")
    commands = plan.apply_ruleset()["nftables"]
    header = {"table": {"family": "inet", "name": "vmsilo-web"}}
    assert commands[:3] == [{"add": header}, {"delete": header}, {"add": header}]
    assert all(next(iter(c)) == "add" for c in commands[3:])
    assert plan.remove_ruleset() == {"nftables": [{"add": header}, {"delete": header}]}
    assert NetworkPlan().apply_ruleset() == {"nftables": []}
