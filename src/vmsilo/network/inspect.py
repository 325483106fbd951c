"""What of a ``NetworkPlan`` exists on the host right now: each TAP's state, master and
addresses, each bridge and its ports, each nftables table and its rule count. Read-only; the
kernel is asked every time (``vmsilo net show``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from vmsilo.host import proc
from vmsilo.network.netlink import Netlink
from vmsilo.network.plan import NetworkPlan


@dataclass(frozen=True)
class TapState:
    name: str
    state: str  # "up", "down", "no carrier" or "absent"
    master: str | None
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class BridgeState:
    name: str
    present: bool
    ports: tuple[str, ...]


@dataclass(frozen=True)
class TableState:
    family: str
    name: str
    rules: int | None  # None: absent, or unreadable (listing tables needs root)
    text: str = ""


@dataclass(frozen=True)
class NetworkState:
    taps: dict[str, TapState]
    bridges: dict[str, BridgeState]
    tables: dict[tuple[str, str], TableState]
    rules_readable: bool


def observe(plan: NetworkPlan, *, with_text: bool = False) -> NetworkState:
    taps: dict[str, TapState] = {}
    bridges: dict[str, BridgeState] = {}
    with Netlink() as link:
        for tap in plan.taps:
            index = link.index(tap.name)
            if index is None:
                taps[tap.name] = TapState(tap.name, "absent", None, ())
                continue
            master = link.master(index)
            taps[tap.name] = TapState(
                tap.name,
                link.operstate(index),
                link.name(master) if master else None,
                tuple(sorted(link.addresses(index))),
            )
        names = [b.name for b in plan.bridges] + list(plan.required_bridges)
        for name in dict.fromkeys(names):
            index = link.index(name)
            ports = () if index is None else tuple(link.name(p) for p in link.ports(index))
            bridges[name] = BridgeState(name, index is not None, ports)
    tables, readable = _tables(plan, with_text)
    return NetworkState(taps, bridges, tables, readable)


def _tables(plan: NetworkPlan, with_text: bool) -> tuple[dict[tuple[str, str], TableState], bool]:
    listed = proc.run(["nft", "-j", "list", "tables"], check=False)
    if listed.returncode != 0:
        return {t.key(): TableState(t.family, t.name, None) for t in plan.tables}, False
    present = {
        (item["table"]["family"], item["table"]["name"])
        for item in json.loads(listed.stdout)["nftables"]
        if "table" in item
    }
    states = {}
    for table in plan.tables:
        if table.key() not in present:
            states[table.key()] = TableState(table.family, table.name, None)
            continue
        dump = proc.run(["nft", "-j", "list", "table", table.family, table.name])
        rules = sum(1 for item in json.loads(dump.stdout)["nftables"] if "rule" in item)
        text = ""
        if with_text:
            text = proc.run(["nft", "list", "table", table.family, table.name]).stdout
        states[table.key()] = TableState(table.family, table.name, rules, text)
    return states, True
