"""The resolved configuration: every VM with its id, CID and interfaces (derived netvm links
included) carrying PCI slot, TAP name, MAC and addresses. This is what the rest of the system
reads, and ``Resolved.to_json()`` is what ``vmsilo config show --json`` prints: the input's
shape with defaults filled and derived values added.

``resolve`` is tolerant on purpose: ``checks`` runs it over a partly invalid config to find
duplicate TAP names and MACs, so it skips what it cannot derive (a netvm naming an unknown VM)
instead of failing. Only an exhausted ``netvmRange`` raises ``DerivationError``.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any

from vmsilo.config.derive import (
    CLIENT_LINK_INTERFACE,
    LinkRequest,
    NetvmLink,
    assign_ids,
    mac_address,
    pci_address,
    pci_slot,
    plan_netvm_links,
    tap_name,
)
from vmsilo.config.model import HOST_NETVM, Interface, VmConfig, VmsiloConfig

DEFAULT_ROUTE = "0.0.0.0/0"


@dataclass(frozen=True)
class ResolvedInterface:
    name: str
    slot: int
    pci_address: str
    kind: str  # "tap" or "vm-switch"
    tap_name: str  # the host TAP (vm-switch ports are TAPs in the network's bridge too)
    mac: str
    addresses: list[str]
    routes: dict[str, str]  # destination CIDR -> gateway
    v6_addresses: list[str]
    v6_routes: dict[str, str]
    dhcp: bool
    host_address: str | None
    bridge: str | None
    link: NetvmLink | None
    interface: Interface | None  # the configured table; None for a derived link interface


@dataclass(frozen=True)
class ResolvedVm:
    name: str
    id: int
    cid: int
    vm: VmConfig
    interfaces: dict[str, ResolvedInterface]
    nameservers: list[str]
    mount_points: dict[str, str]  # sharedDirectories tag -> guest mount point


@dataclass(frozen=True)
class Resolved:
    config: VmsiloConfig
    vms: dict[str, ResolvedVm]
    links: list[NetvmLink] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain JSON data (see module docstring)."""
        document = self.config.model_dump(mode="json", by_alias=True)
        document["vms"] = {name: _vm_document(vm) for name, vm in self.vms.items()}
        document["netvmLinks"] = [_link_document(link) for link in self.links]
        return document

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _link_document(link: NetvmLink) -> dict[str, Any]:
    return {
        "netvm": link.netvm,
        "client": link.client,
        "subnet": str(link.subnet),
        "netvmAddress": link.netvm_cidr,
        "clientAddress": link.client_cidr,
        "bridge": link.bridge,
        "pinned": link.pinned,
    }


def _interface_document(resolved: ResolvedInterface) -> dict[str, Any]:
    if resolved.interface is not None:
        document = resolved.interface.model_dump(mode="json", by_alias=True)
    else:
        document = Interface().model_dump(mode="json", by_alias=True)
        document["addresses"] = resolved.addresses
        document["routes"] = {dest: {"via": via} for dest, via in resolved.routes.items()}
    if resolved.kind == "tap":
        tap = document.get("tap") or {}
        tap["name"] = resolved.tap_name
        tap.setdefault("hostAddress", resolved.host_address)
        tap["bridge"] = resolved.bridge
        document["tap"] = tap
    document["macAddress"] = resolved.mac
    document["pciAddress"] = resolved.pci_address
    if resolved.link is not None:
        document["link"] = _link_document(resolved.link)
    return document


def _vm_document(resolved: ResolvedVm) -> dict[str, Any]:
    document = resolved.vm.model_dump(mode="json", by_alias=True)
    document["name"] = resolved.name
    document["id"] = resolved.id
    document["cid"] = resolved.cid
    document["network"]["nameservers"] = resolved.nameservers
    document["network"]["interfaces"] = {
        name: _interface_document(interface) for name, interface in resolved.interfaces.items()
    }
    for tag, mount_point in resolved.mount_points.items():
        document["sharedDirectories"][tag]["mountPoint"] = mount_point
    return document


def link_requests(config: VmsiloConfig) -> list[LinkRequest]:
    """The netvm links the config asks for; references to unknown or unsuitable netvms are
    left out (``checks`` reports them)."""
    requests = []
    for name, vm in config.vms.items():
        netvm = vm.network.netvm
        if netvm is None or netvm == name:
            continue
        if netvm != HOST_NETVM and (
            netvm not in config.vms or not config.vms[netvm].network.is_netvm
        ):
            continue
        pinned = vm.network.netvm_subnet
        subnet = ipaddress.IPv4Network(pinned, strict=False) if pinned else None
        if subnet is not None and subnet.prefixlen != 31:
            subnet = None
        requests.append(LinkRequest(client=name, netvm=netvm, pinned_subnet=subnet))
    return requests


def _configured_interface(
    vm_name: str, vm_id: int, name: str, slot: int, interface: Interface
) -> ResolvedInterface:
    tap = interface.tap
    host_tap = (tap.name if tap else None) or tap_name(vm_name, vm_id, slot)
    return ResolvedInterface(
        name=name,
        slot=slot,
        pci_address=pci_address(slot),
        kind=interface.type,
        tap_name=host_tap,
        mac=(interface.mac_address or mac_address(vm_name, name)).lower(),
        addresses=list(interface.addresses),
        routes={dest: route.via for dest, route in interface.routes.items()},
        v6_addresses=list(interface.v6_addresses),
        v6_routes={dest: route.via for dest, route in interface.v6_routes.items()},
        dhcp=interface.dhcp,
        host_address=tap.host_address if tap else None,
        bridge=tap.bridge if tap else None,
        link=None,
        interface=interface,
    )


def _link_interface(
    vm_name: str, vm_id: int, name: str, slot: int, link: NetvmLink
) -> ResolvedInterface:
    client_side = link.client == vm_name
    return ResolvedInterface(
        name=name,
        slot=slot,
        pci_address=pci_address(slot),
        kind="tap",
        tap_name=tap_name(vm_name, vm_id, slot),
        mac=mac_address(vm_name, name),
        addresses=[link.client_cidr if client_side else link.netvm_cidr],
        routes={DEFAULT_ROUTE: str(link.netvm_address)} if client_side else {},
        v6_addresses=[],
        v6_routes={},
        dhcp=False,
        host_address=link.netvm_cidr if link.via_host else None,
        bridge=link.bridge,
        link=link,
        interface=None,
    )


def resolve(config: VmsiloConfig) -> Resolved:
    """Every derived value for ``config``; VMs in name order, interfaces in slot order."""
    ids = assign_ids(
        config.vms, {name: vm.id for name, vm in config.vms.items() if vm.id is not None}
    )
    netvm_range = ipaddress.IPv4Network(config.netvm_range, strict=False)
    links = plan_netvm_links(link_requests(config), netvm_range)
    links_by_vm: dict[str, dict[str, NetvmLink]] = {name: {} for name in config.vms}
    for link in links:
        links_by_vm[link.client].setdefault(CLIENT_LINK_INTERFACE, link)
        if not link.via_host:
            links_by_vm[link.netvm].setdefault(link.client, link)

    vms = {}
    for name in sorted(config.vms):
        vm = config.vms[name]
        vm_id = ids[name]
        derived = {
            if_name: link
            for if_name, link in links_by_vm[name].items()
            if if_name not in vm.network.interfaces
        }
        interfaces: dict[str, ResolvedInterface] = {}
        for position, if_name in enumerate(sorted([*vm.network.interfaces, *derived])):
            slot = pci_slot(position)
            if if_name in derived:
                interfaces[if_name] = _link_interface(name, vm_id, if_name, slot, derived[if_name])
            else:
                interfaces[if_name] = _configured_interface(
                    name, vm_id, if_name, slot, vm.network.interfaces[if_name]
                )
        # A VM netvm runs a resolver; a host link has none to offer.
        nameservers = list(vm.network.nameservers)
        upstream = links_by_vm[name].get(CLIENT_LINK_INTERFACE)
        has_vm_netvm = upstream is not None and upstream.client == name and not upstream.via_host
        if has_vm_netvm and not nameservers and upstream is not None:
            nameservers = [str(upstream.netvm_address)]
        mount_points = {
            tag: share.mount_point or f"/mnt/{tag}" for tag, share in vm.shared_directories.items()
        }
        vms[name] = ResolvedVm(
            name=name,
            id=vm_id,
            cid=vm_id,
            vm=vm,
            interfaces=interfaces,
            nameservers=nameservers,
            mount_points=mount_points,
        )
    return Resolved(config=config, vms=vms, links=links)
