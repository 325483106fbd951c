"""Applying and removing plans in a throwaway namespace: TAPs, owners, addresses, bridges and
nftables tables match the plan; removal leaves nothing; applying twice changes nothing."""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
from typing import Any

import pytest

from vmsilo.errors import UserError
from vmsilo.network import NetworkPlan, plan_all, plan_vm
from vmsilo.network.apply import apply_plan, remove_plan
from vmsilo.network.netlink import Netlink

from .conftest import resolved_config, sh

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

CONFIG = """
enable = true
user = "nobody"
hostNetworking.nat = { enable = true, interface = "uplink0" }

[vms.sys-net]
network.isNetvm = true
[vms.banking]
network.netvm = "sys-net"
[vms.web]
network.netvm = "host"
[vms.old.network.interfaces]
wan = { addresses = ["10.9.0.2/24"], tap = { hostAddress = "10.9.0.1/24" } }
lan = { tap = { bridge = "br0" } }
[vms.a.network.interfaces.sw]
type = "vm-switch"
addresses = ["10.5.0.2/24"]
vmNetwork = { name = "office", receiveBroadcast = true }
[vms.b.network.interfaces.sw]
type = "vm-switch"
addresses = ["10.5.0.3/24"]
vmNetwork = { name = "office" }
"""


def _prepare_host(netns: str) -> None:
    sh(netns, "ip", "link", "add", "br0", "type", "bridge")
    sh(netns, "ip", "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1")


def _links(netns: str) -> dict[str, dict[str, Any]]:
    return {link["ifname"]: link for link in json.loads(sh(netns, "ip", "-j", "-d", "addr"))}


def _tables(netns: str) -> list[tuple[str, str]]:
    listed = json.loads(sh(netns, "nft", "-j", "list", "tables"))["nftables"]
    return sorted((t["table"]["family"], t["table"]["name"]) for t in listed if "table" in t)


def _strip(item: dict[str, Any]) -> dict[str, Any]:
    ((kind, body),) = item.items()
    return {kind: {k: v for k, v in body.items() if k != "handle"}}


def _listed_body(netns: str, family: str, name: str) -> list[dict[str, Any]]:
    listed = json.loads(sh(netns, "nft", "-j", "list", "table", family, name))["nftables"]
    return [_strip(item) for item in listed if "chain" in item or "rule" in item]


def _state(netns: str) -> tuple[object, ...]:
    links = _links(netns)
    summary = {
        name: (
            link.get("master"),
            link["flags"],
            sorted(a["local"] for a in link.get("addr_info", []) if a["family"] == "inet"),
        )
        for name, link in links.items()
    }
    rulesets = {" ".join(key): _listed_body(netns, *key) for key in _tables(netns)}
    return summary, json.dumps(rulesets, sort_keys=True)


def test_apply_builds_the_plan_and_remove_leaves_nothing(netns: str) -> None:
    _prepare_host(netns)
    before = _state(netns)
    plan = plan_all(resolved_config(CONFIG))
    apply_plan(plan, netns=netns)

    links = _links(netns)
    with Netlink(netns) as link:
        for tap in plan.taps:
            index = link.index(tap.name)
            assert index is not None, tap.name
            # Only root may attach: vmsilod passes the jailed VMM its descriptor.
            assert (link.kind(index), link.tap_owner(index)) == ("tun", 0)
            assert links[tap.name].get("master") == tap.bridge
            assert "UP" in links[tap.name]["flags"]
            # The TAP keeps a MAC of its own; the guest's is the VMM's business.
            assert links[tap.name]["address"] != tap.guest_mac
    assert links["web-22"]["addr_info"][0]["local"] == "10.200.0.0"
    assert [a["local"] for a in links["old-23"]["addr_info"] if a["family"] == "inet"] == [
        "10.9.0.1"
    ]
    assert {n for n, link in links.items() if link.get("master") == "vmsw-office"} == {
        "a-22",
        "b-22",
    }
    assert {n for n, link in links.items() if link.get("master") == "vmsl-1"} == {
        "banking-22",
        "sys-net-22",
    }
    assert sh(netns, "sysctl", "-n", "net.ipv4.conf.web-22.forwarding").strip() == "1"

    assert _tables(netns) == sorted(t.key() for t in plan.tables)
    for table in plan.tables:
        assert _listed_body(netns, table.family, table.name) == list(table.body), table.name

    remove_plan(plan, netns=netns)
    assert _state(netns) == before
    remove_plan(plan, netns=netns)  # nothing there: still fine
    assert _state(netns) == before


def test_apply_twice_is_the_same_as_once(netns: str) -> None:
    _prepare_host(netns)
    plan = plan_all(resolved_config(CONFIG))
    apply_plan(plan, netns=netns)
    once = _state(netns)
    apply_plan(plan, netns=netns)
    assert _state(netns) == once


def test_apply_repairs_a_leftover_tap(netns: str) -> None:
    """A crash (or an older version, which gave TAPs to the desktop user) can leave a TAP
    with a stray address or owned by someone else."""
    _prepare_host(netns)
    plan = plan_vm(resolved_config(CONFIG), "web")
    nobody = str(pwd.getpwnam("nobody").pw_uid)
    sh(netns, "ip", "tuntap", "add", "mode", "tap", "name", "web-22", "user", nobody)
    sh(netns, "ip", "addr", "add", "192.0.2.7/24", "dev", "web-22")
    apply_plan(plan, netns=netns)
    with Netlink(netns) as link:
        index = link.index("web-22")
        assert index is not None
        assert link.tap_owner(index) == 0
        assert link.addresses(index) == {"10.200.0.0/31"}


def test_removing_one_side_of_a_link_keeps_the_shared_bridge(netns: str) -> None:
    _prepare_host(netns)
    resolved = resolved_config(CONFIG)
    netvm, client = plan_vm(resolved, "sys-net"), plan_vm(resolved, "banking")
    apply_plan(netvm, netns=netns)
    apply_plan(client, netns=netns)
    remove_plan(client, netns=netns)
    links = _links(netns)
    assert "banking-22" not in links
    assert links["sys-net-22"].get("master") == "vmsl-1"
    apply_plan(client, netns=netns)  # the client restarts into the same bridge
    assert _links(netns)["banking-22"].get("master") == "vmsl-1"
    remove_plan(client, netns=netns)
    remove_plan(netvm, netns=netns)
    assert "vmsl-1" not in _links(netns)


def test_a_missing_user_bridge_is_named_and_nothing_changes(netns: str) -> None:
    sh(netns, "ip", "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1")
    before = _state(netns)
    plan = plan_vm(resolved_config(CONFIG), "old")
    with pytest.raises(
        UserError, match=r"vms\.old\.network\.interfaces\.lan\.tap\.bridge: .*'br0'"
    ):
        apply_plan(plan, netns=netns)
    assert _state(netns) == before


def test_a_missing_uplink_is_named_and_nothing_changes(netns: str) -> None:
    before = _state(netns)
    with pytest.raises(UserError, match=r"hostNetworking\.nat\.interface: .*'uplink0'"):
        apply_plan(plan_vm(resolved_config(CONFIG), "web"), netns=netns)
    assert _state(netns) == before


def test_an_unknown_owner_is_named_and_nothing_changes(netns: str) -> None:
    _prepare_host(netns)
    before = _state(netns)
    plan = plan_vm(resolved_config(CONFIG), "web")
    plan = dataclasses.replace(
        plan, taps=tuple(dataclasses.replace(tap, owner="no-such-user-x") for tap in plan.taps))
    with pytest.raises(UserError, match=r"user: 'no-such-user-x'"):
        apply_plan(plan, netns=netns)
    assert _state(netns) == before


def test_an_empty_plan_changes_nothing(netns: str) -> None:
    before = _state(netns)
    apply_plan(NetworkPlan(), netns=netns)
    remove_plan(NetworkPlan(), netns=netns)
    assert _state(netns) == before
