"""Derived identities: VM ids (and vsock CIDs), interface PCI slots, host TAP names, MAC
addresses and netvm link subnets. Pure functions of names and numbers, no config models and no
I/O, so they can be tested against fixed vectors and properties.

The rules are upstream's, stated in DESIGN.md. One refinement keeps TAP names unique: upstream's
shortened form ``<prefix><id>-<slot>`` can collide with another VM's full ``<name>-<slot>`` (VM
``bankingsupe3`` against ``bankingsupersecret`` with id 3) or with another shortened name when
the prefix ends in a digit. So a full name of exactly 15 characters whose VM name ends in a digit
is shortened too, and a shortened prefix ending in a digit has that digit replaced by ``_``
(which VM names cannot contain). Every name produced is then decodable into (prefix, id, slot)
or (VM name, slot), hence unique.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from vmsilo.config.fields import IFNAMSIZ_MAX
from vmsilo.config.model import FIRST_VM_ID, HOST_NETVM

PCI_SLOT_BASE = 0x16
# PCI device numbers end at 0x1f, so slots 0x16..0x1f leave room for ten interfaces. (Upstream
# documents fifteen, which would hand the VMM addresses 0x20..0x24 that do not exist.)
MAX_INTERFACES = 0x1F - PCI_SLOT_BASE + 1
CLIENT_LINK_INTERFACE = "upstream"
LINK_BRIDGE_PREFIX = "vmsl-"


class DerivationError(ValueError):
    """A derived value cannot be produced (e.g. the netvm range has no free /31 left)."""


def assign_ids(names: Iterable[str], explicit: Mapping[str, int]) -> dict[str, int]:
    """Ids from 3 upward in sorted name order; explicit ids are kept and skipped over."""
    taken = set(explicit.values())
    ids: dict[str, int] = {}
    candidate = FIRST_VM_ID
    for name in sorted(names):
        if name in explicit:
            ids[name] = explicit[name]
            continue
        while candidate in taken:
            candidate += 1
        ids[name] = candidate
        taken.add(candidate)
    return ids


def pci_slot(position: int) -> int:
    """The PCI slot of the interface at ``position`` in name order."""
    return PCI_SLOT_BASE + position


def pci_address(slot: int) -> str:
    """``0x16`` → ``"00:16.0"`` (bus 0, function 0, slot in hex)."""
    return f"00:{slot:02x}.0"


def tap_name(vm_name: str, vm_id: int, slot: int) -> str:
    """Host TAP name: ``banking-22``; when too long, ``bankingsupe3-22`` (VM id in the name)."""
    full = f"{vm_name}-{slot}"
    if len(full) < IFNAMSIZ_MAX or (len(full) == IFNAMSIZ_MAX and not vm_name[-1].isdigit()):
        return full
    suffix = f"{vm_id}-{slot}"
    prefix = vm_name[: IFNAMSIZ_MAX - len(suffix)]
    if prefix and prefix[-1].isdigit():
        prefix = prefix[:-1] + "_"
    return prefix + suffix


def mac_address(vm_name: str, interface_name: str) -> str:
    """``52:`` and the first five bytes of SHA-1(``<vm>-<interface>``): unicast, local."""
    digest = hashlib.sha1(f"{vm_name}-{interface_name}".encode()).digest()
    return ":".join(f"{byte:02x}" for byte in (0x52, *digest[:5]))


@dataclass(frozen=True)
class LinkRequest:
    """A VM (``client``) that wants its network through ``netvm`` (a VM name or ``"host"``)."""

    client: str
    netvm: str
    pinned_subnet: ipaddress.IPv4Network | None = None


@dataclass(frozen=True)
class NetvmLink:
    """One point-to-point /31 between a netvm (or the host) and a client VM."""

    index: int
    netvm: str
    client: str
    subnet: ipaddress.IPv4Network
    pinned: bool

    @property
    def netvm_address(self) -> ipaddress.IPv4Address:
        return self.subnet.network_address

    @property
    def client_address(self) -> ipaddress.IPv4Address:
        return self.subnet.network_address + 1

    @property
    def netvm_cidr(self) -> str:
        return f"{self.netvm_address}/31"

    @property
    def client_cidr(self) -> str:
        return f"{self.client_address}/31"

    @property
    def via_host(self) -> bool:
        return self.netvm == HOST_NETVM

    @property
    def bridge(self) -> str | None:
        """Both TAPs of a VM-to-VM link go into this bridge; a host link needs none."""
        return None if self.via_host else link_bridge_name(self.index)


def link_bridge_name(index: int) -> str:
    return f"{LINK_BRIDGE_PREFIX}{index}"


def _free_subnets(
    pool: ipaddress.IPv4Network, pinned: set[ipaddress.IPv4Network]
) -> Iterator[ipaddress.IPv4Network]:
    for subnet in pool.subnets(new_prefix=31):
        if subnet not in pinned:
            yield subnet


def plan_netvm_links(
    requests: Iterable[LinkRequest], netvm_range: ipaddress.IPv4Network
) -> list[NetvmLink]:
    """One /31 per request, in (netvm, client) order, from ``netvm_range``; pinned subnets are
    used as given and never handed to another link. The netvm end is the even address."""
    ordered = sorted(requests, key=lambda request: (request.netvm, request.client))
    pinned = {r.pinned_subnet for r in ordered if r.pinned_subnet is not None}
    free = _free_subnets(netvm_range, pinned) if netvm_range.prefixlen <= 31 else iter(())
    links = []
    for index, request in enumerate(ordered):
        subnet = request.pinned_subnet
        if subnet is None:
            subnet = next(free, None)
            if subnet is None:
                raise DerivationError(
                    f"netvmRange {netvm_range} has no free /31 left for the link of VM "
                    f"{request.client!r}; use a larger netvmRange"
                )
        links.append(
            NetvmLink(
                index=index,
                netvm=request.netvm,
                client=request.client,
                subnet=subnet,
                pinned=request.pinned_subnet is not None,
            )
        )
    return links
