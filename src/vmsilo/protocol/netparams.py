"""The guest's network settings as kernel command-line parameters: the one format both ends
share. The host encodes a VM's interfaces into ``vmsilo.*`` words; the guest decodes them at
early boot (``vmsilo.agent.netconf``). The image is the same for every VM with the same
packages, so everything per VM travels here.

Words (each may repeat; values never contain spaces):

- ``vmsilo.ifname=<name>,<mac>``     the interface with this MAC is called ``name``
- ``vmsilo.addr=<name>,<cidr>``      a static IPv4 or IPv6 address
- ``vmsilo.route=<name>,<dest>,<via>`` a route through a gateway on that interface
- ``vmsilo.dhcp=<name>``             DHCPv4 on that interface
- ``vmsilo.dns=<address>``           a nameserver (the guest's resolv.conf, in order)
- ``vmsilo.downstream=<name>``       this VM is a netvm and ``name`` is a client's link

The command line comes from the host, which is trusted by the guest, but the decoder still
rejects anything malformed word by word (``NetParamError``) rather than half-configuring.
Stdlib only: it runs in the guest.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from vmsilo.protocol.errors import ProtocolError

_T = TypeVar("_T")

PREFIX = "vmsilo."
# x86's COMMAND_LINE_SIZE; the host refuses a command line that would be cut.
KERNEL_CMDLINE_MAX = 2048

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}\Z")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}\Z")

IpInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class NetParamError(ProtocolError, ValueError):
    """A ``vmsilo.*`` network word that does not parse."""


@dataclass(frozen=True)
class GuestRoute:
    destination: IpNetwork
    via: IpAddress


@dataclass
class GuestInterface:
    name: str
    mac: str
    addresses: list[IpInterface] = field(default_factory=list)
    routes: list[GuestRoute] = field(default_factory=list)
    dhcp: bool = False
    downstream: bool = False  # a netvm's link to one of its clients


@dataclass
class GuestNetwork:
    interfaces: dict[str, GuestInterface] = field(default_factory=dict)
    nameservers: list[IpAddress] = field(default_factory=list)

    @property
    def is_netvm(self) -> bool:
        return any(i.downstream for i in self.interfaces.values())

    def encode(self) -> list[str]:
        words: list[str] = []
        for iface in self.interfaces.values():
            words.append(f"{PREFIX}ifname={iface.name},{iface.mac}")
            words += [f"{PREFIX}addr={iface.name},{a}" for a in iface.addresses]
            words += [f"{PREFIX}route={iface.name},{r.destination},{r.via}" for r in iface.routes]
            if iface.dhcp:
                words.append(f"{PREFIX}dhcp={iface.name}")
            if iface.downstream:
                words.append(f"{PREFIX}downstream={iface.name}")
        words += [f"{PREFIX}dns={ns}" for ns in self.nameservers]
        return words


def _name(value: str, word: str) -> str:
    if not _NAME.match(value):
        raise NetParamError(f"{word}: {value!r} is not an interface name")
    return value


def _parts(value: str, count: int, word: str) -> list[str]:
    parts = value.split(",")
    if len(parts) != count:
        raise NetParamError(f"{word}: expected {count} comma-separated fields")
    return parts


def _ip(parse: Callable[[str], _T], value: str, word: str) -> _T:
    try:
        return parse(value)
    except ValueError:
        raise NetParamError(f"{word}: {value!r} is not an IP address") from None


def decode(cmdline: str) -> GuestNetwork:
    """The network settings in a kernel command line; other words are ignored."""
    network = GuestNetwork()
    pending: list[tuple[str, str, str]] = []  # words that name an interface, after ifname
    for word in cmdline.split():
        key, sep, value = word.partition("=")
        if not key.startswith(PREFIX) or not sep:
            continue
        kind = key[len(PREFIX) :]
        if kind == "ifname":
            name, mac = _parts(value, 2, word)
            mac = mac.lower()
            if not _MAC.match(mac):
                raise NetParamError(f"{word}: {mac!r} is not a MAC address")
            network.interfaces[_name(name, word)] = GuestInterface(name=name, mac=mac)
        elif kind == "dns":
            network.nameservers.append(_ip(ipaddress.ip_address, value, word))
        elif kind in ("addr", "route", "dhcp", "downstream"):
            pending.append((kind, value, word))
    for kind, value, word in pending:
        name = value.split(",", 1)[0]
        iface = network.interfaces.get(name)
        if iface is None:
            raise NetParamError(f"{word}: no vmsilo.ifname names interface {name!r}")
        if kind == "addr":
            _, cidr = _parts(value, 2, word)
            if "/" not in cidr:
                raise NetParamError(f"{word}: {cidr!r} has no prefix length")
            iface.addresses.append(_ip(ipaddress.ip_interface, cidr, word))
        elif kind == "route":
            _, dest, via = _parts(value, 3, word)
            destination = _ip(lambda v: ipaddress.ip_network(v, strict=False), dest, word)
            gateway = _ip(ipaddress.ip_address, via, word)
            if destination.version != gateway.version:
                raise NetParamError(f"{word}: destination and gateway differ in IP version")
            iface.routes.append(GuestRoute(destination, gateway))
        elif kind == "dhcp":
            _parts(value, 1, word)
            iface.dhcp = True
        else:
            _parts(value, 1, word)
            iface.downstream = True
    return network
