"""The network plan: a pure function from the resolved config to what the host must build for
one VM (or all): TAP devices, bridges we own, bridges the user must provide, and nftables
tables as JSON data. It performs no I/O; ``apply`` turns the value into kernel state.

Policy, per VM, in tables of its own (``inet vmsilo-<vm>``, ``bridge vmsilo-<vm>``):

- A NATed TAP (``network.netvm = "host"``, or ``tap.hostAddress`` with ``hostNetworking.nat``):
  the VM's traffic is masqueraded out of the uplink (``hostNetworking.nat.interface``; when
  unset, out of any interface but the TAP itself); only IPv4 from the VM's own addresses is
  forwarded; nothing new is forwarded *to* the TAP; the VM reaches the host itself only with
  replies (established/related). No DHCP or DNS is allowed to the host: the host serves
  neither, guests get static addresses and their nameservers on the kernel command line.
- A TAP in a bridge we own (a netvm link ``vmsl-N``, a vm-switch network): the port may send
  only from the guest's MAC; a client's link port and every vm-switch port only IPv4/ARP from
  the interface's addresses (a netvm's link port forwards others' packets, so only its MAC is
  checked); the host takes no traffic from these ports. A vm-switch port without
  ``receiveBroadcast`` gets no broadcast or multicast frames except ARP.
- A TAP with only ``tap.hostAddress`` (no NAT) or in a user bridge (``tap.bridge``) is the
  user's own network and gets no rules.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from vmsilo.config.fields import IFNAMSIZ_MAX
from vmsilo.config.model import VmSwitch
from vmsilo.config.resolved import Resolved, ResolvedInterface
from vmsilo.errors import UserError
from vmsilo.network import nft
from vmsilo.network.nft import Json

TABLE_PREFIX = "vmsilo-"
VM_SWITCH_BRIDGE_PREFIX = "vmsw-"
# Named after a hash when the network name is too long or not a valid interface name.
VM_SWITCH_HASHED_PREFIX = "vmsh-"
_SIMPLE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*\Z")

# Priorities: run before the usual ``filter`` chains, so our drops come first, and NAT at the
# standard source-NAT priority.
INET_FILTER_PRIORITY = -10
SRCNAT_PRIORITY = 100
BRIDGE_FILTER_PRIORITY = -210

_T = TypeVar("_T")

ALL_INTERFACES = "all"  # net.ipv4.conf.all: every interface

BridgePurpose = Literal["netvm-link", "vm-switch"]


@dataclass(frozen=True)
class FqCodel:
    """fq_codel settings for a TAP's egress queue (frames towards the guest)."""

    target_us: int
    interval_us: int
    memory_limit: int
    quantum: int


TAP_OWNER = "root"


@dataclass(frozen=True)
class TapDevice:
    name: str
    owner: str  # the user who may attach to the TAP (root: vmsilod passes the VMM its fd)
    vm: str
    interface: str
    guest_mac: str  # the guest's MAC, for rules; the TAP keeps a MAC of its own
    host_address: str | None = None
    bridge: str | None = None
    fq_codel: FqCodel | None = None
    # vm-switch ports: the bridge answers ARP for these guest addresses (proxy ARP)
    neighbours: tuple[str, ...] = ()


@dataclass(frozen=True)
class Bridge:
    name: str
    purpose: BridgePurpose


@dataclass(frozen=True)
class NftTable:
    family: str
    name: str
    body: tuple[Json, ...]  # chains and rules, in order, without the table itself

    def key(self) -> tuple[str, str]:
        return (self.family, self.name)


@dataclass(frozen=True)
class NetworkPlan:
    taps: tuple[TapDevice, ...] = ()
    bridges: tuple[Bridge, ...] = ()  # created by us; removed once no port is left
    required_bridges: tuple[str, ...] = ()  # the user's (``tap.bridge``): must already exist
    tables: tuple[NftTable, ...] = ()
    # IPv4 forwarding is switched on per interface (the TAPs and the uplink), not globally.
    forwarding_interfaces: tuple[str, ...] = ()

    def apply_ruleset(self) -> Json:
        """One transaction that replaces every table of the plan (add+delete makes the delete
        safe when the table does not exist yet)."""
        commands: list[Json] = []
        for table in self.tables:
            header = nft.table(table.family, table.name)
            commands += [{"add": header}, {"delete": header}, {"add": header}]
            commands += [{"add": item} for item in table.body]
        return {"nftables": commands}

    def remove_ruleset(self) -> Json:
        commands: list[Json] = []
        for table in self.tables:
            header = nft.table(table.family, table.name)
            commands += [{"add": header}, {"delete": header}]
        return {"nftables": commands}

    def merged(self, other: NetworkPlan) -> NetworkPlan:
        return NetworkPlan(
            taps=self.taps + other.taps,
            bridges=_unique(self.bridges + other.bridges),
            required_bridges=_unique(self.required_bridges + other.required_bridges),
            tables=self.tables + other.tables,
            forwarding_interfaces=_unique(self.forwarding_interfaces + other.forwarding_interfaces),
        )


def _unique(items: Iterable[_T]) -> tuple[_T, ...]:
    return tuple(dict.fromkeys(items))


def table_name(vm: str) -> str:
    return TABLE_PREFIX + vm


def vm_switch_bridge_name(network: str) -> str:
    """``vmsw-<network>`` when that is a valid interface name, else ``vmsh-`` and a hash."""
    readable = VM_SWITCH_BRIDGE_PREFIX + network
    if len(readable) <= IFNAMSIZ_MAX and _SIMPLE_NAME.match(network):
        return readable
    digest = hashlib.sha1(network.encode()).hexdigest()
    return VM_SWITCH_HASHED_PREFIX + digest[: IFNAMSIZ_MAX - len(VM_SWITCH_HASHED_PREFIX)]


def plan_all(resolved: Resolved) -> NetworkPlan:
    plan = NetworkPlan()
    for name in resolved.vms:
        plan = plan.merged(plan_vm(resolved, name))
    return plan


def plan_vm(resolved: Resolved, vm_name: str) -> NetworkPlan:
    """What the host builds for ``vm_name`` (a VM with no interfaces gets an empty plan)."""
    vm = resolved.vms.get(vm_name)
    if vm is None:
        known = ", ".join(sorted(resolved.vms)) or "none"
        raise UserError(f"VM {vm_name!r} is not in the config (VMs: {known}); check the name")
    nat = resolved.config.host_networking.nat
    uplink = nat.interface or None
    taps: list[TapDevice] = []
    bridges: list[Bridge] = []
    required: list[str] = []
    forwarding: list[str] = []
    inet = _TableBuilder("inet", table_name(vm_name))
    bridge = _TableBuilder("bridge", table_name(vm_name))

    for interface in vm.interfaces.values():
        tap = interface.tap_name
        bridge_name = interface.bridge
        fq_codel = None
        neighbours: tuple[str, ...] = ()
        if interface.kind == "vm-switch" and interface.interface is not None:
            network = interface.interface.vm_network
            assert network is not None  # checks guarantee a vmNetwork for vm-switch
            bridge_name = vm_switch_bridge_name(network.name)
            bridges.append(Bridge(bridge_name, "vm-switch"))
            fq_codel = _fq_codel(resolved.config.vm_switch)
            neighbours = tuple(str(ipaddress.IPv4Interface(a).ip) for a in interface.addresses)
            bridge.port(
                tap,
                interface.mac,
                _own_sources(interface, extra=network.routes),
                receive_broadcast=network.receive_broadcast,
            )
        elif interface.link is not None and bridge_name is not None:
            bridges.append(Bridge(bridge_name, "netvm-link"))
            client_side = interface.link.client == vm_name
            sources = [str(interface.link.client_address)] if client_side else None
            bridge.port(tap, interface.mac, sources, receive_broadcast=True)
        elif bridge_name is not None:
            required.append(bridge_name)

        nat_here = interface.link is not None and interface.link.via_host
        nat_here |= interface.link is None and nat.enable and interface.host_address is not None
        if nat_here:
            inet.nat_port(tap, _own_sources(interface), uplink)
            # Replies come in on the uplink: it forwards too. Without a named uplink, every
            # interface may be one ("all").
            forwarding += [tap, uplink or ALL_INTERFACES]

        taps.append(
            TapDevice(
                name=tap,
                # Nobody but root may attach to it: vmsilod opens it and passes the descriptor
                # to the jailed VMM, so the desktop user gets no handle on the VM's traffic.
                owner=TAP_OWNER,
                vm=vm_name,
                interface=interface.name,
                guest_mac=interface.mac,
                host_address=interface.host_address,
                bridge=bridge_name,
                fq_codel=fq_codel,
                neighbours=neighbours,
            )
        )
    tables = tuple(t.build() for t in (inet, bridge) if t.has_rules())
    return NetworkPlan(
        taps=tuple(taps),
        bridges=_unique(bridges),
        required_bridges=_unique(required),
        tables=tables,
        forwarding_interfaces=_unique(forwarding),
    )


def _own_sources(interface: ResolvedInterface, extra: Iterable[str] = ()) -> list[str]:
    """The source addresses the guest may use: its addresses (as /32), else the TAP's subnet,
    plus the prefixes it routes for (vm-switch ``routes``)."""
    sources = [f"{ipaddress.IPv4Interface(a).ip}/32" for a in interface.addresses]
    if not sources and interface.host_address is not None:
        sources = [str(ipaddress.IPv4Interface(interface.host_address).network)]
    return sources + [str(ipaddress.IPv4Network(p, strict=False)) for p in extra]


def _fq_codel(settings: VmSwitch) -> FqCodel:
    return FqCodel(
        target_us=round(settings.fq_codel_target_seconds * 1_000_000),
        interval_us=round(settings.fq_codel_interval_seconds * 1_000_000),
        memory_limit=settings.fq_codel_limit_bytes,
        quantum=settings.fq_codel_quantum_bytes,
    )


@dataclass
class _TableBuilder:
    family: str
    name: str
    chains: dict[str, Json] = field(default_factory=dict)
    rules: list[Json] = field(default_factory=list)

    def has_rules(self) -> bool:
        return bool(self.rules)

    def build(self) -> NftTable:
        # Grouped by chain, as ``nft list`` shows them; order within a chain is kept.
        order = list(self.chains)
        rules = sorted(self.rules, key=lambda item: order.index(item["rule"]["chain"]))
        return NftTable(self.family, self.name, (*self.chains.values(), *rules))

    def _chain(self, name: str, kind: str, hook: str, priority: int) -> str:
        if name not in self.chains:
            self.chains[name] = nft.base_chain(self.family, self.name, name, kind, hook, priority)
        return name

    def _rule(self, chain: str, *expr: Json, comment: str | None = None) -> None:
        self.rules.append(nft.rule(self.family, self.name, chain, list(expr), comment))

    def nat_port(self, tap: str, sources: list[str], uplink: str | None) -> None:
        """NAT out of the uplink, replies back, no new connections to the host or the VM."""
        inp = self._chain("input", "filter", "input", INET_FILTER_PRIORITY)
        fwd = self._chain("forward", "filter", "forward", INET_FILTER_PRIORITY)
        post = self._chain("postrouting", "nat", "postrouting", SRCNAT_PRIORITY)
        allowed = nft.one_of([nft.prefix(s) for s in sources])
        from_tap = nft.iifname(tap)
        to_uplink = nft.oifname(uplink) if uplink else nft.oifname(tap, "!=")
        established = nft.ct_state("established", "related")
        self._rule(inp, from_tap, established, nft.ACCEPT)
        self._rule(inp, from_tap, nft.DROP, comment="no new connections from the VM to the host")
        ipv4 = nft.match(nft.meta("nfproto"), "ipv4", "!=")
        self._rule(fwd, from_tap, ipv4, nft.DROP)
        saddr = nft.payload("ip", "saddr")
        self._rule(fwd, from_tap, nft.match(saddr, allowed, "!="), nft.DROP, comment="spoofed")
        self._rule(fwd, from_tap, to_uplink, nft.ACCEPT)
        self._rule(fwd, from_tap, nft.DROP)
        self._rule(fwd, nft.oifname(tap), established, nft.ACCEPT)
        self._rule(fwd, nft.oifname(tap), nft.DROP)
        self._rule(post, nft.match(saddr, allowed), to_uplink, nft.MASQUERADE)

    def port(
        self, tap: str, mac: str, sources: list[str] | None, *, receive_broadcast: bool
    ) -> None:
        """Anti-spoofing on a bridge port; ``sources`` None checks only the MAC."""
        fwd = self._chain("forward", "filter", "forward", BRIDGE_FILTER_PRIORITY)
        inp = self._chain("input", "filter", "input", BRIDGE_FILTER_PRIORITY)
        from_tap = nft.iifname(tap)
        self._rule(inp, from_tap, nft.DROP, comment="the host is not on this network")
        ether_saddr = nft.payload("ether", "saddr")
        self._rule(fwd, from_tap, nft.match(ether_saddr, mac, "!="), nft.DROP, comment="spoofed")
        if sources is not None:
            ether_type = nft.payload("ether", "type")
            allowed = nft.one_of([nft.prefix(s) for s in sources]) if sources else None
            self._rule(fwd, from_tap, nft.match(ether_type, {"set": ["ip", "arp"]}, "!="), nft.DROP)
            arp_ether = nft.payload("arp", "saddr ether")
            self._rule(fwd, from_tap, nft.match(arp_ether, mac, "!="), nft.DROP)
            if allowed is None:
                self._rule(fwd, from_tap, nft.DROP, comment="no address configured")
            else:
                for protocol, fieldname in (("arp", "saddr ip"), ("ip", "saddr")):
                    source = nft.payload(protocol, fieldname)
                    self._rule(fwd, from_tap, nft.match(source, allowed, "!="), nft.DROP)
        if not receive_broadcast:
            pkttype = nft.match(nft.meta("pkttype"), {"set": ["broadcast", "multicast"]})
            not_arp = nft.match(nft.payload("ether", "type"), "arp", "!=")
            self._rule(fwd, nft.oifname(tap), not_arp, pkttype, nft.DROP)


def plan_to_json(plan: NetworkPlan) -> Json:
    """The plan as JSON data, saved next to a running VM: its removal after a daemon restart
    or a config change removes what was applied, not what the config says now."""
    return {
        "taps": [dataclasses.asdict(tap) for tap in plan.taps],
        "bridges": [dataclasses.asdict(bridge) for bridge in plan.bridges],
        "required_bridges": list(plan.required_bridges),
        "tables": [
            {"family": t.family, "name": t.name, "body": list(t.body)} for t in plan.tables
        ],
        "forwarding_interfaces": list(plan.forwarding_interfaces),
    }


def plan_from_json(data: Json) -> NetworkPlan:
    """Inverse of ``plan_to_json``; raises KeyError/TypeError on a malformed record."""

    def tap(item: Json) -> TapDevice:
        fq = item.get("fq_codel")
        return TapDevice(
            **{
                **item,
                "fq_codel": FqCodel(**fq) if fq else None,
                "neighbours": tuple(item.get("neighbours", ())),
            }
        )

    return NetworkPlan(
        taps=tuple(tap(item) for item in data["taps"]),
        bridges=tuple(Bridge(**item) for item in data["bridges"]),
        required_bridges=tuple(data["required_bridges"]),
        tables=tuple(
            NftTable(t["family"], t["name"], tuple(t["body"])) for t in data["tables"]
        ),
        forwarding_interfaces=tuple(data["forwarding_interfaces"]),
    )
