"""What a VM's guest is told about its network: its interfaces (names, MACs, addresses,
routes, DHCP), its nameservers and, for a netvm, which interfaces lead to clients. Pure: the
result is encoded as kernel command-line words (``protocol.netparams``) by the launch plan.

vm-switch networks add one thing the config does not spell out per VM: a route to every
prefix another member advertises in ``vmNetwork.routes``, through that member's address, so
the members reach each other's subnets as upstream's switch routes them.
"""

from __future__ import annotations

import ipaddress

from vmsilo.config.resolved import Resolved, ResolvedInterface
from vmsilo.errors import UserError
from vmsilo.protocol.netparams import (
    KERNEL_CMDLINE_MAX,
    GuestInterface,
    GuestNetwork,
    GuestRoute,
)


def _routes(interface: ResolvedInterface) -> list[GuestRoute]:
    return [
        GuestRoute(ipaddress.ip_network(dest, strict=False), ipaddress.ip_address(via))
        for dest, via in [*interface.routes.items(), *interface.v6_routes.items()]
    ]


def _switch_routes(
    resolved: Resolved, vm_name: str, interface: ResolvedInterface
) -> list[GuestRoute]:
    network = interface.interface.vm_network if interface.interface else None
    if network is None:
        return []
    own = {route.destination for route in _routes(interface)}
    routes = []
    for other_name, other in resolved.vms.items():
        if other_name == vm_name:
            continue
        for peer in other.interfaces.values():
            peer_network = peer.interface.vm_network if peer.interface else None
            if peer.kind != "vm-switch" or peer_network is None:
                continue
            if peer_network.name != network.name or not peer.addresses:
                continue
            via = ipaddress.IPv4Interface(peer.addresses[0]).ip
            for prefix in peer_network.routes:
                destination = ipaddress.IPv4Network(prefix, strict=False)
                if destination not in own:
                    own.add(destination)
                    routes.append(GuestRoute(destination, via))
    return routes


def guest_network(resolved: Resolved, vm_name: str) -> GuestNetwork:
    vm = resolved.vms[vm_name]
    network = GuestNetwork(nameservers=[ipaddress.ip_address(ns) for ns in vm.nameservers])
    for interface in vm.interfaces.values():
        addresses = [
            ipaddress.ip_interface(a) for a in [*interface.addresses, *interface.v6_addresses]
        ]
        link = interface.link
        network.interfaces[interface.name] = GuestInterface(
            name=interface.name,
            mac=interface.mac,
            addresses=addresses,
            routes=_routes(interface) + _switch_routes(resolved, vm_name, interface),
            dhcp=interface.dhcp,
            downstream=link is not None and link.netvm == vm_name and not link.via_host,
        )
    return network


def guest_params(resolved: Resolved, vm_name: str) -> list[str]:
    return guest_network(resolved, vm_name).encode()


def check_cmdline_length(vm_name: str, cmdline: str) -> None:
    """The kernel silently cuts a command line that is too long, which would lose settings."""
    if len(cmdline) >= KERNEL_CMDLINE_MAX:
        raise UserError(
            f"vms.{vm_name}: its kernel command line would be {len(cmdline)} bytes, over the "
            f"kernel's {KERNEL_CMDLINE_MAX - 1}; remove interfaces, addresses, routes or "
            "kernelParams"
        )
