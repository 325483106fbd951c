"""Validated string types used by the config models: addresses, CIDRs, MACs, PCI BDFs, paths,
interface names, Debian package names, virtiofsd id maps, sizes, durations, colours.

Many values land in another grammar: the guest's kernel command line (``protocol.netparams``,
``protocol.shareparams``: words split at whitespace, fields at commas), networkd files and
``resolv.conf`` in the guest (one setting per line), QEMU and virtiofsd option strings (commas).
Each validator accepts only what every place the value lands can carry: IPv6 scope ids
(``fe80::1%eth0``), which Python's ``ipaddress`` takes with *any* text after the ``%``, are
refused where nothing needs them and limited to an interface name for nameservers.

Each validator checks one value in isolation and raises ``ValueError("<what is wrong>; <how to
fix>")``; relations between values belong to ``checks``. Values stay strings on the models (so
the resolved JSON keeps the user's spelling); parsed forms are computed where they are used.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator

from vmsilo.config.colours import parse_colour
from vmsilo.config.units import parse_duration, parse_size

IFNAMSIZ_MAX = 15
# The guest's decoder (protocol.netparams) wants the first character alphanumeric or '_'; a
# leading '-' would also read as an option to ip(8).
_IFNAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}")
_MAC_RE = re.compile(r"[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}")
_BDF_RE = re.compile(
    r"(?:(?P<domain>[0-9a-fA-F]{4}):)?(?P<bus>[0-9a-fA-F]{2}):"
    r"(?P<device>[0-1][0-9a-fA-F])\.(?P<function>[0-7])"
)
_SYSFS_PCI_RE = re.compile(r"/sys/bus/pci/devices/(?P<bdf>[0-9a-fA-F:.]+)/?")
_DEBIAN_PACKAGE_RE = re.compile(r"[a-z0-9][a-z0-9+.-]+")
_UNIT_RE = re.compile(
    r"[A-Za-z0-9:_.\\@-]+\.(?:service|socket|timer|path|target|mount|automount|swap|slice)"
)
_ID_MAP_RE = re.compile(r":(\d+):(\d+):(\d+):")
_TRANSLATE_TYPES = ("guest", "host", "map", "squash-guest", "squash-host", "forbid-guest")
_HEX4_RE = re.compile(r"[0-9a-fA-F]{4}")
_USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_MODE_RE = re.compile(r"0?[0-7]{3,4}")
_MOUNT_POINT_RE = re.compile(r"/[A-Za-z0-9_./@+-]*")  # protocol.shareparams' grammar


def _no_scope(value: str) -> None:
    """Refuse an IPv6 scope id: ``ipaddress`` accepts any text after ``%`` (spaces, commas,
    newlines), which would become new kernel words, option fields or networkd lines."""
    if "%" in value:
        address, _, rest = value.partition("%")
        scope, slash, prefix = rest.partition("/")
        plain = address + slash + prefix
        raise ValueError(
            f"{value!r} has an IPv6 scope id ('%{scope}'), which this option cannot carry; "
            f"write it without one, e.g. '{plain}' (the interface is the one it is set on)"
        )


def _validator(check: Callable[[str], None]) -> AfterValidator:
    def run(value: str) -> str:
        check(value)
        return value

    return AfterValidator(run)


def check_ipv4_interface(value: str) -> None:
    """An IPv4 address with prefix length, as in ``addresses``: ``10.0.0.1/24``."""
    if "/" not in value:
        raise ValueError(f"{value!r} has no prefix length; write it as CIDR, e.g. '10.0.0.1/24'")
    try:
        ipaddress.IPv4Interface(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is not an IPv4 address with prefix; write e.g. '10.0.0.1/24'"
        ) from None


def check_ipv6_interface(value: str) -> None:
    if "/" not in value:
        raise ValueError(f"{value!r} has no prefix length; write it as CIDR, e.g. 'fc00::2/64'")
    _no_scope(value)
    try:
        ipaddress.IPv6Interface(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is not an IPv6 address with prefix; write e.g. 'fc00::2/64'"
        ) from None


def check_ip_interface(value: str) -> None:
    """An IPv4 or IPv6 address with prefix (``tap.hostAddress``)."""
    if ":" in value:
        check_ipv6_interface(value)
    else:
        check_ipv4_interface(value)


def _check_network(
    value: str, kind: type[ipaddress.IPv4Interface | ipaddress.IPv6Interface], example: str
) -> None:
    family = "IPv4" if kind is ipaddress.IPv4Interface else "IPv6"
    if "/" not in value:
        raise ValueError(f"{value!r} has no prefix length; write it as CIDR, e.g. '{example}'")
    _no_scope(value)
    try:
        interface = kind(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an {family} network; write e.g. '{example}'") from None
    if interface.ip != interface.network.network_address:
        raise ValueError(f"{value!r} has host bits set; write the network as '{interface.network}'")


def check_ipv4_network(value: str) -> None:
    """A network in CIDR form with no host bits: ``10.0.0.0/24``, ``0.0.0.0/0``."""
    _check_network(value, ipaddress.IPv4Interface, "10.0.0.0/24")


def check_ipv6_network(value: str) -> None:
    _check_network(value, ipaddress.IPv6Interface, "fc00::/64")


def check_ipv4_address(value: str) -> None:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 address; write e.g. '10.0.0.254'") from None


def check_ipv6_address(value: str) -> None:
    _no_scope(value)
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv6 address; write e.g. 'fc00::1'") from None


def check_ip_address(value: str) -> None:
    _no_scope(value)
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is not an IP address; write e.g. '1.1.1.1' or '2606:4700::1111'"
        ) from None


def check_nameserver(value: str) -> None:
    """A nameserver: an IP address; a link-local IPv6 one may name its interface
    (``fe80::1%eth0``, as resolv.conf allows), and the scope must then be an interface name:
    the value becomes one ``vmsilo.dns=`` kernel word and one ``nameserver`` line."""
    address, percent, scope = value.partition("%")
    if not percent:
        check_ip_address(value)
        return
    try:
        ipaddress.IPv6Address(address)
    except ValueError:
        raise ValueError(
            f"{value!r} is not an IP address; write e.g. '1.1.1.1' or 'fe80::1%eth0'"
        ) from None
    if not _IFNAME_RE.fullmatch(scope):
        raise ValueError(
            f"{value!r} has a scope id {scope!r} that is not an interface name; write the "
            f"guest's interface after '%' (1-15 letters, digits, '_', '-', '.'), "
            f"e.g. '{address}%eth0', or drop the scope"
        )


def check_guest_mount_point(value: str) -> None:
    """Where the guest mounts a share: it travels in a ``vmsilo.share=<tag>,<mount point>,..``
    kernel word (``protocol.shareparams``), so only the characters its decoder takes."""
    if not _MOUNT_POINT_RE.fullmatch(value) or ".." in value.split("/"):
        raise ValueError(
            f"{value!r} cannot be a guest mount point; write an absolute path of letters, "
            "digits and '_', '.', '/', '@', '+', '-' without '..', e.g. '/mnt/docs'"
        )


def check_mac(value: str) -> None:
    if not _MAC_RE.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a MAC address; write six hex pairs, e.g. '52:ab:cd:ef:12:34'"
        )
    if int(value[:2], 16) & 1:
        raise ValueError(
            f"{value!r} is a multicast MAC address; use a unicast one (even first byte), "
            "e.g. '52:ab:cd:ef:12:34'"
        )


def check_interface_name(value: str) -> None:
    """A Linux network interface name: at most 15 characters, no '/', ':' or whitespace, and
    not starting with '-' or '.' (the guest's decoder, protocol.netparams, refuses those)."""
    if not _IFNAME_RE.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a valid interface name; use 1-15 characters from "
            "letters, digits, '_', '-' and '.', starting with a letter, digit or '_'"
        )


def normalise_bdf(value: str) -> str | None:
    """``01:00.0`` → ``0000:01:00.0``; a sysfs device path → its BDF; anything else → None."""
    sysfs = _SYSFS_PCI_RE.fullmatch(value)
    candidate = sysfs["bdf"] if sysfs else value
    match = _BDF_RE.fullmatch(candidate)
    if match is None:
        return None
    domain = match["domain"] or "0000"
    return f"{domain}:{match['bus']}:{match['device']}.{match['function']}".lower()


def check_bdf(value: str) -> None:
    if _BDF_RE.fullmatch(value) is None:
        raise ValueError(
            f"{value!r} is not a PCI address; write bus:device.function as '01:00.0' "
            "or '0000:01:00.0' (see lspci -D)"
        )


def check_pci_path(value: str) -> None:
    if normalise_bdf(value) is None:
        raise ValueError(
            f"{value!r} is not a PCI device; write '01:00.0', '0000:01:00.0' or "
            "'/sys/bus/pci/devices/0000:01:00.0'"
        )


def check_absolute_path(value: str) -> None:
    if not value.startswith("/") or "\0" in value:
        raise ValueError(f"{value!r} is not an absolute path; write a path starting with '/'")


def check_debian_package(value: str) -> None:
    if not _DEBIAN_PACKAGE_RE.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a Debian package name; use at least two characters from "
            "lower-case letters, digits, '+', '-' and '.', starting with a letter or digit"
        )


def check_unit_name(value: str) -> None:
    if not _UNIT_RE.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a systemd unit name; write e.g. 'ssh.service' or 'foo.timer'"
        )


def check_id_map(value: str) -> None:
    if not _ID_MAP_RE.fullmatch(value):
        raise ValueError(
            f"{value!r} is not an id map; write ':namespace_id:host_id:count:', "
            "e.g. ':0:100000:65536:'"
        )


def check_translate_map(value: str) -> None:
    """virtiofsd's ``--translate-uid``/``--translate-gid`` form: ``<type>:<source>:<target>:
    <count>``, except ``forbid-guest:<guest base>:<count>`` (no target)."""
    parts = value.split(":")
    if parts[0] == "forbid-guest":
        if len(parts) != 3 or not all(part.isdigit() for part in parts[1:]):
            raise ValueError(f"{value!r} is not an id translation; write "
                             "'forbid-guest:<guest base>:<count>', e.g. 'forbid-guest:0:1000'")
        return
    if (
        len(parts) != 4
        or parts[0] not in _TRANSLATE_TYPES
        or not all(part.isdigit() for part in parts[1:])
    ):
        raise ValueError(
            f"{value!r} is not an id translation; write '<type>:<source>:<target>:<count>' "
            f"with type one of {', '.join(_TRANSLATE_TYPES)}, e.g. 'map:1000:1000:1' "
            "('forbid-guest:<guest base>:<count>' has no target)"
        )


def check_hex4(value: str) -> None:
    if not _HEX4_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a USB id; write 4 hex digits, e.g. '046d'")


def check_file_mode(value: str) -> None:
    if not _MODE_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a file mode; write octal digits, e.g. '0644'")


def check_size(value: str | int) -> None:
    parse_size(value)


def check_duration(value: str) -> None:
    parse_duration(value)


def check_colour(value: str) -> None:
    parse_colour(value)


Ipv4Interface = Annotated[str, _validator(check_ipv4_interface)]
Ipv6Interface = Annotated[str, _validator(check_ipv6_interface)]
IpInterface = Annotated[str, _validator(check_ip_interface)]
Ipv4Network = Annotated[str, _validator(check_ipv4_network)]
Ipv6Network = Annotated[str, _validator(check_ipv6_network)]
Ipv4Address = Annotated[str, _validator(check_ipv4_address)]
Ipv6Address = Annotated[str, _validator(check_ipv6_address)]
IpAddress = Annotated[str, _validator(check_ip_address)]
Nameserver = Annotated[str, _validator(check_nameserver)]
GuestMountPoint = Annotated[str, _validator(check_guest_mount_point)]
MacAddress = Annotated[str, _validator(check_mac)]
InterfaceName = Annotated[str, _validator(check_interface_name)]
Bdf = Annotated[str, _validator(check_bdf)]
PciPath = Annotated[str, _validator(check_pci_path)]
AbsolutePath = Annotated[str, _validator(check_absolute_path)]
DebianPackage = Annotated[str, _validator(check_debian_package)]
UnitName = Annotated[str, _validator(check_unit_name)]
IdMap = Annotated[str, _validator(check_id_map)]
TranslateMap = Annotated[str, _validator(check_translate_map)]
UsbId = Annotated[str, _validator(check_hex4)]
FileMode = Annotated[str, _validator(check_file_mode)]
Duration = Annotated[str, _validator(check_duration)]
Colour = Annotated[str, _validator(check_colour)]


def _size_type(value: object) -> object:
    # Without this, a value of the wrong type reports one error per member of the union.
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(
            f'expected a size, got {type(value).__name__} {value!r}; write e.g. "10G" or 4096'
        )
    return value


def _size_validator(value: str | int) -> str | int:
    check_size(value)
    return value


Size = Annotated[str | int, BeforeValidator(_size_type), AfterValidator(_size_validator)]


def check_user_name(value: str) -> None:
    if not _USER_RE.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a user name; give the login name of the desktop user, e.g. 'alice'"
        )


UserName = Annotated[str, _validator(check_user_name)]
