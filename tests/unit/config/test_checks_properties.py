"""Validation over random configs: it either accepts a config, whose derived TAP names and
MACs are then unique, or rejects it with ConfigError — never another exception."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from vmsilo.config import ConfigError, resolve, validate_config

names = st.sampled_from(["a", "b", "sys-net", "bankingsupersecret", "bankingsupe3", "vpn"])
interface_names = st.sampled_from(["wan", "eth0", "upstream", "a", "lan"])


@st.composite
def vm_tables(draw: st.DrawFn) -> dict[str, Any]:
    table: dict[str, Any] = {}
    if draw(st.integers(0, 3)) == 0:
        table["id"] = draw(st.integers(2, 12))
    network: dict[str, Any] = {"isNetvm": draw(st.booleans())}
    if draw(st.booleans()):
        network["netvm"] = draw(st.one_of(names, st.just("host")))
        if draw(st.integers(0, 3)) == 0:
            network["netvmSubnet"] = draw(
                st.sampled_from(["10.200.0.0/31", "10.200.0.2/31", "10.200.0.4/30", "10.9.0.0/31"])
            )
    interfaces = draw(st.lists(interface_names, max_size=3, unique=True))
    network["interfaces"] = {name: {"tap": {}} for name in interfaces}
    if interfaces and draw(st.integers(0, 5)) == 0:
        network["interfaces"][interfaces[0]]["tap"]["name"] = draw(st.sampled_from(["x", "a-22"]))
    table["network"] = network
    if draw(st.integers(0, 3)) == 0:
        table["dependsOn"] = draw(st.lists(names, max_size=2))
    return table


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(names, vm_tables(), max_size=5))
def test_validation_accepts_or_reports(vms: dict[str, dict[str, Any]]) -> None:
    try:
        config = validate_config({"user": "alice", "vms": vms})
    except ConfigError as exc:
        assert exc.problems
        return
    resolved = resolve(config)
    taps = [i.tap_name for vm in resolved.vms.values() for i in vm.interfaces.values()]
    macs = [i.mac for vm in resolved.vms.values() for i in vm.interfaces.values()]
    ids = [vm.id for vm in resolved.vms.values()]
    assert len(set(taps)) == len(taps)
    assert len(set(macs)) == len(macs)
    assert len(set(ids)) == len(ids)
    assert all(tap is not None and len(tap) <= 15 for tap in taps)
