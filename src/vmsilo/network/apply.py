"""Putting a ``NetworkPlan`` on the kernel and taking it off: TAPs, bridges and addresses over
netlink (``netlink.Netlink``), nftables tables in one ``nft -j -f -`` transaction, per-interface
IPv4 forwarding with ``sysctl``. Both directions are idempotent and work from the plan alone,
so ``remove`` cleans up after a crash or a restarted daemon as well as after a clean stop.
Everything is checked before anything changes; a failure half-way removes what was applied.
"""

from __future__ import annotations

import hashlib
import json
import pwd
from collections.abc import Sequence
from dataclasses import dataclass

from vmsilo.errors import UserError
from vmsilo.host import proc
from vmsilo.network.netlink import Netlink
from vmsilo.network.plan import ALL_INTERFACES, NetworkPlan, TapDevice

TAP_KIND = "tun"
BRIDGE_KIND = "bridge"


@dataclass(frozen=True)
class ApplyResult:
    # TAPs whose fq_codel could not be set because the kernel lacks the qdisc.
    without_fq_codel: tuple[str, ...] = ()


def _in_netns(netns: str | None, command: Sequence[str]) -> list[str]:
    return (["ip", "netns", "exec", netns] if netns else []) + list(command)


def _run_nft(ruleset: dict[str, object], netns: str | None) -> None:
    if ruleset.get("nftables"):
        proc.run(_in_netns(netns, ["nft", "-j", "-f", "-"]), input=json.dumps(ruleset))


def _owner_uid(user: str) -> int:
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise UserError(
            f"user: {user!r} is not a user on this host; set `user` to the account that runs "
            "the VMs"
        ) from None


def _check(plan: NetworkPlan, link: Netlink) -> dict[str, int]:
    """Owner uids by user; UserError for anything apply cannot build."""
    uids = {tap.owner: _owner_uid(tap.owner) for tap in plan.taps}
    for tap in plan.taps:
        index = link.index(tap.name)
        if index is not None and link.kind(index) != TAP_KIND:
            raise UserError(
                f"vms.{tap.vm}.network.interfaces.{tap.interface}: the host already has a "
                f"non-TAP interface named {tap.name!r}; rename or remove it, or set tap.name"
            )
    for bridge in plan.required_bridges:
        index = link.index(bridge)
        if index is None or link.kind(index) != BRIDGE_KIND:
            users = [t for t in plan.taps if t.bridge == bridge]
            where = (
                f"vms.{users[0].vm}.network.interfaces.{users[0].interface}.tap.bridge"
                if users
                else "tap.bridge"
            )
            raise UserError(
                f"{where}: the host has no bridge {bridge!r}; create it first (e.g. "
                f"`ip link add {bridge} type bridge`) or change the setting"
            )
    for bridge_plan in plan.bridges:
        index = link.index(bridge_plan.name)
        if index is not None and link.kind(index) != BRIDGE_KIND:
            raise UserError(
                f"the host has a non-bridge interface named {bridge_plan.name!r}, which vmsilo "
                "needs for a bridge; remove or rename it"
            )
    tap_names = {tap.name for tap in plan.taps}
    for interface in plan.forwarding_interfaces:
        if interface not in tap_names | {ALL_INTERFACES} and link.index(interface) is None:
            raise UserError(
                f"hostNetworking.nat.interface: the host has no interface {interface!r} to NAT "
                "VM traffic out of; set it to the uplink (see `ip link`)"
            )
    return uids


def apply_plan(plan: NetworkPlan, *, netns: str | None = None) -> ApplyResult:
    """Make the kernel match ``plan`` (in ``netns``, or the host's namespace)."""
    with Netlink(netns) as link:
        uids = _check(plan, link)
        try:
            _run_nft(plan.apply_ruleset(), netns)
            for bridge in plan.bridges:
                index = link.index(bridge.name)
                if index is None:
                    index = link.create_bridge(bridge.name, bridge_mac(bridge.name))
                link.set_up(index)
            without_fq_codel = [
                tap.name for tap in plan.taps if not _apply_tap(link, tap, uids[tap.owner])
            ]
            for interface in plan.forwarding_interfaces:
                key = f"net/ipv4/conf/{interface}/forwarding=1"
                proc.run(_in_netns(netns, ["sysctl", "-q", "-w", key]))
        except BaseException:
            _remove(plan, link, netns)
            raise
    return ApplyResult(without_fq_codel=tuple(without_fq_codel))


def bridge_mac(name: str) -> str:
    """A locally administered unicast MAC derived from the bridge's name."""
    digest = hashlib.sha1(f"vmsilo-bridge-{name}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def _apply_tap(link: Netlink, tap: TapDevice, uid: int) -> bool:
    """Create or fix one TAP; False when it should have fq_codel and the kernel lacks it."""
    index = link.index(tap.name)
    if index is not None and link.tap_owner(index) != uid:
        link.delete(index)  # a leftover with another owner: the VMM could not open it
        index = None
    if index is None:
        index = link.create_tap(tap.name, uid)
    wanted = {tap.host_address} if tap.host_address else set()
    present = link.addresses(index)
    for cidr in present - wanted:
        link.delete_address(index, cidr)
    for cidr in wanted - present:
        link.add_address(index, cidr)
    if tap.bridge is not None:
        bridge = link.index(tap.bridge)
        if bridge is None:
            raise UserError(f"bridge {tap.bridge!r} vanished while TAP {tap.name} was set up")
        if link.master(index) != bridge:
            link.set_master(index, bridge)
        if tap.fq_codel is not None:  # a vm-switch port
            configure_switch_port(link, index, bridge, tap)
    elif link.master(index) is not None:
        link.set_master(index, 0)
    link.set_up(index)
    if tap.fq_codel is not None:
        settings = tap.fq_codel
        return link.set_fq_codel(
            index,
            target_us=settings.target_us,
            interval_us=settings.interval_us,
            memory_limit=settings.memory_limit,
            quantum=settings.quantum,
        )
    return True


def configure_switch_port(link: Netlink, index: int, bridge: int, tap: TapDevice) -> None:
    """Neighbour proxying on a vm-switch port: a static forwarding entry for the guest's MAC
    and, on the bridge, a permanent neighbour entry per guest address, so that the bridge
    answers members' ARP requests itself (upstream's switch answers ARP locally too)."""
    link.set_port_proxy_arp(index)
    link.add_static_fdb(index, bridge, tap.guest_mac)
    for ip in tap.neighbours:
        link.set_neighbour(bridge, ip, tap.guest_mac)


def remove_plan(plan: NetworkPlan, *, netns: str | None = None) -> None:
    """Delete the plan's tables and TAPs, and its bridges once no port is left on them. Safe
    to run when none, some or all of it exists."""
    with Netlink(netns) as link:
        _remove(plan, link, netns)


def _remove(plan: NetworkPlan, link: Netlink, netns: str | None) -> None:
    _run_nft(plan.remove_ruleset(), netns)
    for tap in plan.taps:
        bridge_index = link.index(tap.bridge) if tap.neighbours and tap.bridge else None
        if bridge_index is not None:
            for ip in tap.neighbours:
                link.delete_neighbour(bridge_index, ip)
        index = link.index(tap.name)
        if index is not None and link.kind(index) == TAP_KIND:
            link.delete(index)
    for bridge in plan.bridges:
        index = link.index(bridge.name)
        if index is not None and link.kind(index) == BRIDGE_KIND and not link.ports(index):
            link.delete(index)
