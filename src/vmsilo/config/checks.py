"""Checks that relate several values: interface types and their tables, dependencies and netvm
references, link subnets, PCI and USB claims, uniqueness of ids, TAP names and MACs, VM names,
shared folders inside one another.

Each check returns problem lines ``<dotted.path>: <what is wrong>; <how to fix>`` and never
stops at the first. The checks run over whatever VMs passed field validation, so a typo in
one VM does not hide a cycle between two others; ``all_vm_names`` still knows every VM so a
reference to a VM that failed validation is not reported as unknown.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping

from vmsilo.config import grammars
from vmsilo.config.derive import (
    CLIENT_LINK_INTERFACE,
    LINK_BRIDGE_PREFIX,
    MAX_INTERFACES,
    DerivationError,
)
from vmsilo.config.fields import IFNAMSIZ_MAX, check_interface_name, normalise_bdf
from vmsilo.config.model import HOST_NETVM, UsbDevice, VmConfig, VmsiloConfig
from vmsilo.config.resolved import resolve
from vmsilo.host.paths import Mode, Paths

_VM_NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# The guest mounts the shared home here under this tag (vmsilo.shares.plan repeats them).
GUEST_HOME = "/home/user"
HOME_TAG = "vmsilo-home"
_TAG_RE = re.compile(r"[A-Za-z0-9_.-]{1,36}")
_PLAIN_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")


def path_key(key: str) -> str:
    """A table key as it appears in a dotted path: quoted when it is not a bare TOML key."""
    if _PLAIN_KEY_RE.fullmatch(key):
        return key
    return '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


def vm_path(vm: str, *rest: str) -> str:
    return ".".join(["vms", path_key(vm), *rest])


def interface_path(vm: str, interface: str, *rest: str) -> str:
    return vm_path(vm, "network", "interfaces", path_key(interface), *rest)


def check_config(
    config: VmsiloConfig,
    *,
    all_vm_names: Collection[str] | None = None,
    settings_valid: bool = True,
) -> list[str]:
    """Every cross-field problem in ``config``. ``settings_valid`` is False when the global
    options failed validation; checks that need them are then skipped (their errors are
    already reported)."""
    known = set(all_vm_names) if all_vm_names is not None else set(config.vms)
    problems: list[str] = []
    problems += _vm_names(known)
    for name, vm in config.vms.items():
        problems += _vm_table(name, vm)
        problems += _grammars(name, vm)
    problems += _depends_on(config.vms, known)
    problems += _netvm_references(config.vms, known)
    problems += _explicit_ids(config.vms)
    problems += _usb_claims(config.vms)
    problems += _pci_claims(config, settings_valid)
    problems += _share_overlaps(config.vms)
    if settings_valid:
        problems += _global(config)
        problems += _netvm_subnets(config)
        problems += _subnet_overlaps(config)
    problems += _derived(config)
    return problems


def _global(config: VmsiloConfig) -> list[str]:
    nat = config.host_networking.nat
    problems = []
    if nat.enable and not nat.interface:
        problems.append(
            "hostNetworking.nat.interface: required when hostNetworking.nat.enable = true; "
            'set it to the host\'s uplink interface, e.g. "eth0"'
        )
    elif nat.interface:
        try:
            check_interface_name(nat.interface)
        except ValueError as exc:
            problems.append(f"hostNetworking.nat.interface: {exc}")
    if ipaddress.IPv4Network(config.netvm_range).prefixlen > 31:
        problems.append(
            f"netvmRange: {config.netvm_range} holds no /31 link subnet; "
            "use a network of /31 or larger, e.g. '10.200.0.0/16'"
        )
    return problems


def _vm_names(names: Iterable[str]) -> list[str]:
    problems = []
    for name in sorted(names):
        if not _VM_NAME_RE.fullmatch(name):
            problems.append(
                f"{vm_path(name)}: {name!r} cannot be used as a VM name (it becomes a hostname "
                "and a directory name); use 1-63 lower-case letters, digits and '-', "
                "starting and ending with a letter or digit"
            )
        elif name == HOST_NETVM:
            problems.append(
                f"{vm_path(name)}: 'host' is reserved (network.netvm = \"host\" means the host "
                "itself); rename the VM"
            )
    return problems


def _vm_table(name: str, vm: VmConfig) -> list[str]:
    problems = []
    if vm.name is not None and vm.name != name:
        problems.append(
            f"{vm_path(name, 'name')}: {vm.name!r} differs from the table name {name!r}; "
            "remove name or make it equal to the table name"
        )
    for if_name, interface in vm.network.interfaces.items():
        try:
            check_interface_name(if_name)
        except ValueError as exc:
            problems.append(f"{interface_path(name, if_name)}: {exc}")
        tap = interface.tap
        if interface.type == "tap":
            if tap is None:
                problems.append(
                    f"{interface_path(name, if_name, 'tap')}: missing; an interface of "
                    'type = "tap" needs a tap table, add tap = {} (optionally with '
                    "hostAddress or bridge)"
                )
            if interface.vm_network is not None:
                problems.append(
                    f"{interface_path(name, if_name, 'vmNetwork')}: only used with "
                    'type = "vm-switch"; remove it or set type = "vm-switch"'
                )
        else:
            if interface.vm_network is None:
                problems.append(
                    f"{interface_path(name, if_name, 'vmNetwork')}: missing; an interface of "
                    'type = "vm-switch" needs vmNetwork.name, the network to join'
                )
            if tap is not None:
                problems.append(
                    f'{interface_path(name, if_name, "tap")}: only used with type = "tap"; '
                    'remove it or set type = "tap"'
                )
        if tap is not None and tap.host_address and tap.bridge:
            problems.append(
                f"{interface_path(name, if_name, 'tap')}: hostAddress and bridge are mutually "
                "exclusive; set one"
            )
        if tap is not None and tap.bridge and tap.bridge.startswith(LINK_BRIDGE_PREFIX):
            problems.append(
                f"{interface_path(name, if_name, 'tap', 'bridge')}: names starting with "
                f"{LINK_BRIDGE_PREFIX!r} are reserved for netvm link bridges; choose another name"
            )
    mount_points: dict[str, str] = {}
    if vm.shared_home is not False:
        mount_points[GUEST_HOME] = "sharedHome"
    for tag, share in vm.shared_directories.items():
        share_path = vm_path(name, "sharedDirectories", path_key(tag))
        if tag == HOME_TAG and vm.shared_home is not False:
            problems.append(
                f"{share_path}: the tag {HOME_TAG!r} is the shared home's; choose another tag"
            )
        mount_point = str(share.mount_point or f"/mnt/{tag}").rstrip("/") or "/"
        if mount_point in mount_points:
            problems.append(
                f"{share_path}.mountPoint: {mount_point} is also where "
                f"{mount_points[mount_point]} is mounted; choose another mountPoint"
            )
        mount_points.setdefault(mount_point, f"sharedDirectories.{tag}")
        if not _TAG_RE.fullmatch(tag):
            problems.append(
                f"{share_path}: {tag!r} cannot be a virtiofs tag; use 1-36 characters from "
                "letters, digits, '_', '-' and '.'"
            )
        if share.posix_acl and (share.translate_uid or share.translate_gid):
            problems.append(
                f"{share_path}: posixAcl (on by default) cannot be combined with "
                "translateUid/translateGid; set posixAcl = false or remove the translation"
            )
    problems.extend(_gpu(name, vm))
    return problems


def _grammars(name: str, vm: VmConfig) -> list[str]:
    """Values checked for where they land (``grammars``): kernelParams as kernel words, the
    disks' QEMU options, and socket paths (for a valid VM name only: others are reported)."""
    problems = grammars.kernel_param_problems(vm_path(name), vm)
    problems += grammars.disk_problems(vm_path(name), vm)
    if _VM_NAME_RE.fullmatch(name):
        problems += grammars.socket_problems(vm_path(name), name, vm, HOME_TAG)
    return problems


def _gpu(name: str, vm: VmConfig) -> list[str]:
    """The accelerated path (virtio-gpu cross-domain through vhost-device-gpu or crosvm's GPU
    device) exists for cloud-hypervisor and crosvm only; QEMU VMs get the portable Wayland
    path. Asking a QEMU VM for it is refused rather than ignored."""
    if vm.hypervisor != "qemu":
        return []
    return [
        f"{vm_path(name, 'gpu', option)}: the accelerated GPU path needs hypervisor = "
        f'"cloud-hypervisor" or "crosvm"; QEMU VMs show windows through gpu.wayland. Set '
        f"gpu.{option} = false"
        for option, wanted in (("opengl", vm.gpu.opengl), ("vulkan", vm.gpu.vulkan)) if wanted
    ]


def _depends_on(vms: Mapping[str, VmConfig], known: set[str]) -> list[str]:
    problems = []
    for name, vm in sorted(vms.items()):
        for dependency in vm.depends_on:
            if dependency not in known:
                problems.append(
                    f"{vm_path(name, 'dependsOn')}: unknown VM {dependency!r}; "
                    f"define [vms.{path_key(dependency)}] or remove it from dependsOn"
                    + _listing("VMs", known - {name})
                )
    graph = {name: [d for d in vm.depends_on if d in vms] for name, vm in vms.items()}
    for cycle in _cycles(graph):
        chain = " -> ".join([*cycle, cycle[0]])
        problems.append(
            f"{vm_path(cycle[0], 'dependsOn')}: dependency cycle {chain}; "
            "remove one of these dependencies"
        )
    return problems


def _netvm_references(vms: Mapping[str, VmConfig], known: set[str]) -> list[str]:
    problems = []
    for name, vm in sorted(vms.items()):
        netvm = vm.network.netvm
        path = vm_path(name, "network", "netvm")
        if netvm is None:
            if vm.network.netvm_subnet is not None:
                problems.append(
                    f"{vm_path(name, 'network', 'netvmSubnet')}: set without network.netvm; "
                    "remove it or set network.netvm"
                )
            continue
        if netvm == name:
            problems.append(f'{path}: a VM cannot be its own netvm; name another VM or "host"')
        elif netvm == HOST_NETVM:
            pass
        elif netvm not in known:
            netvms = sorted(n for n, v in vms.items() if v.network.is_netvm)
            problems.append(
                f'{path}: unknown VM {netvm!r}; use "host" or a VM with '
                "network.isNetvm = true" + _listing("netvms", netvms)
            )
        elif netvm in vms and not vms[netvm].network.is_netvm:
            problems.append(
                f"{path}: VM {netvm!r} is not a netvm; set vms.{path_key(netvm)}.network.isNetvm "
                "= true or name another VM"
            )
        elif netvm in vms and len(name) > IFNAMSIZ_MAX:
            problems.append(
                f"{path}: netvm {netvm!r} gets an interface named after this VM, and {name!r} "
                f"is longer than {IFNAMSIZ_MAX} characters; use a shorter VM name"
            )
        if netvm != HOST_NETVM and netvm in vms and name in vms[netvm].network.interfaces:
            problems.append(
                f"{interface_path(netvm, name)}: this name is taken by the link to client VM "
                f"{name!r}; rename the interface"
            )
        if CLIENT_LINK_INTERFACE in vm.network.interfaces:
            problems.append(
                f"{interface_path(name, CLIENT_LINK_INTERFACE)}: the name is taken by the "
                "netvm link of a VM with network.netvm; rename the interface"
            )
    upstream_of = {
        name: [netvm]
        for name, vm in vms.items()
        if (netvm := vm.network.netvm) is not None and netvm in vms and netvm != name
    }
    for cycle in _cycles(upstream_of):
        chain = " -> ".join([*cycle, cycle[0]])
        problems.append(
            f"{vm_path(cycle[0], 'network', 'netvm')}: netvm cycle {chain}; "
            'one of these VMs must use another netvm or "host"'
        )
    return problems


def _netvm_subnets(config: VmsiloConfig) -> list[str]:
    netvm_range = ipaddress.IPv4Network(config.netvm_range)
    problems = []
    owners: dict[ipaddress.IPv4Network, list[str]] = defaultdict(list)
    for name, vm in sorted(config.vms.items()):
        pinned = vm.network.netvm_subnet
        if pinned is None or vm.network.netvm is None:
            continue
        path = vm_path(name, "network", "netvmSubnet")
        subnet = ipaddress.IPv4Network(pinned)
        if subnet.prefixlen != 31:
            problems.append(
                f"{path}: {pinned} is a /{subnet.prefixlen}; a netvm link is a /31, "
                f"e.g. '{subnet.network_address}/31'"
            )
            continue
        if not subnet.subnet_of(netvm_range):
            problems.append(
                f"{path}: {pinned} is outside netvmRange {config.netvm_range}; "
                "pick a /31 inside it or change netvmRange"
            )
        owners[subnet].append(name)
    for subnet, names in owners.items():
        for other in names[1:]:
            problems.append(
                f"{vm_path(other, 'network', 'netvmSubnet')}: {subnet} is already the link "
                f"subnet of VM {names[0]!r}; each link needs its own /31"
            )
    return problems


def _subnet_overlaps(config: VmsiloConfig) -> list[str]:
    """Subnets that would make routing ambiguous: two interfaces of one VM on overlapping
    subnets, two TAPs whose host addresses overlap on the host, and any configured subnet
    inside ``netvmRange`` when netvm links take their /31s from it."""
    problems: list[str] = []
    netvm_range = ipaddress.IPv4Network(config.netvm_range)
    uses_links = any(vm.network.netvm is not None for vm in config.vms.values())
    host_side: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str, str]] = []
    for name, vm in config.vms.items():
        guest_side: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str, str]] = []
        for if_name, interface in vm.network.interfaces.items():
            cidrs = [(a, interface_path(name, if_name, "addresses")) for a in interface.addresses]
            cidrs += [
                (a, interface_path(name, if_name, "v6Addresses")) for a in interface.v6_addresses
            ]
            for cidr, path in cidrs:
                network = ipaddress.ip_interface(cidr).network
                for other, _, other_if in guest_side:
                    if other_if != if_name and network.overlaps(other):
                        problems.append(
                            f"{path}: {cidr} overlaps {other} of interface {other_if!r}; give "
                            "each interface its own subnet"
                        )
                guest_side.append((network, path, if_name))
            host = interface.tap.host_address if interface.tap else None
            if host is not None:
                path = interface_path(name, if_name, "tap", "hostAddress")
                network = ipaddress.ip_interface(host).network
                for other, other_path, _ in host_side:
                    if network.overlaps(other):
                        problems.append(
                            f"{path}: {host} overlaps {other} of {other_path} on the host; "
                            "give each TAP its own subnet"
                        )
                host_side.append((network, path, if_name))
                cidrs.append((host, path))
            for cidr, path in cidrs if uses_links else []:
                network = ipaddress.ip_interface(cidr).network
                if network.version == 4 and network.overlaps(netvm_range):
                    problems.append(
                        f"{path}: {cidr} overlaps netvmRange {config.netvm_range}, where netvm "
                        "links take their subnets; choose another subnet or change netvmRange"
                    )
    return problems


def _explicit_ids(vms: Mapping[str, VmConfig]) -> list[str]:
    problems = []
    owner: dict[int, str] = {}
    for name, vm in sorted(vms.items()):
        if vm.id is None:
            continue
        if vm.id in owner:
            problems.append(
                f"{vm_path(name, 'id')}: {vm.id} is already the id of VM {owner[vm.id]!r}; "
                "choose another id or remove it"
            )
        else:
            owner[vm.id] = name
    return problems


def _usb_overlap(a: UsbDevice, b: UsbDevice) -> bool:
    same_model = (a.vendor_id.lower(), a.product_id.lower()) == (
        b.vendor_id.lower(),
        b.product_id.lower(),
    )
    return same_model and (a.serial is None or b.serial is None or a.serial == b.serial)


def _usb_claims(vms: Mapping[str, VmConfig]) -> list[str]:
    problems = []
    claims: list[tuple[str, UsbDevice]] = []
    for name, vm in sorted(vms.items()):
        for index, device in enumerate(vm.usb_devices):
            for other_vm, other in claims:
                if other_vm != name and _usb_overlap(device, other):
                    ident = f"{device.vendor_id}:{device.product_id}"
                    problems.append(
                        f"{vm_path(name, f'usbDevices[{index}]')}: USB device {ident} is also "
                        f"claimed by VM {other_vm!r}; give each VM a different device, or "
                        "distinguish them with serial"
                    )
                    break
        claims += [(name, device) for device in vm.usb_devices]
    return problems


def _pci_claims(config: VmsiloConfig, settings_valid: bool) -> list[str]:
    isolated = {normalise_bdf(bdf) for bdf in config.isolated_pci_devices}
    owner: dict[str, str] = {}
    problems = []
    for name, vm in sorted(config.vms.items()):
        for index, device in enumerate(vm.pci_devices):
            path = vm_path(name, f"pciDevices[{index}]", "path")
            bdf = normalise_bdf(device.path)
            if bdf is None:
                continue
            if settings_valid and bdf not in isolated:
                problems.append(
                    f"{path}: {device.path} is not in isolatedPciDevices; add "
                    f"'{bdf}' to isolatedPciDevices so vfio-pci claims it"
                )
            if bdf in owner and owner[bdf] != name:
                problems.append(
                    f"{path}: {bdf} is already passed through to VM {owner[bdf]!r}; "
                    "a PCI device can belong to one VM only"
                )
            owner.setdefault(bdf, name)
    return problems


def _share_sources(vms: Mapping[str, VmConfig]) -> list[tuple[str, str, str, bool]]:
    """(VM, option path, host path, readonly) of every share, as ``vmsilo.shares.plan``
    computes them: ``sharedHome = true`` is ``<shared root>/<vm>`` (``/shared/<vm>``, the
    root moved by ``VMSILO_ROOT``) — shares are served by a system-mode vmsilod only."""
    shared_root = Paths.for_mode(Mode.SYSTEM).shared_root
    sources = []
    for name, vm in sorted(vms.items()):
        if vm.shared_home is True:
            sources.append((name, vm_path(name, "sharedHome"), str(shared_root / name), False))
        elif vm.shared_home is not False:
            sources.append((name, vm_path(name, "sharedHome"), vm.shared_home, False))
        for tag, share in sorted(vm.shared_directories.items()):
            option = vm_path(name, "sharedDirectories", path_key(tag), "path")
            sources.append((name, option, share.path, share.readonly))
    return sources


def _components(path: str) -> tuple[str, ...]:
    return tuple(part for part in os.path.normpath(path).split("/") if part)


def _share_overlaps(vms: Mapping[str, VmConfig]) -> list[str]:
    """A share inside another share (of any VM, shared homes included), and one folder that
    two VMs both share read-write. A guest that can write a folder on the way to another
    share could swap what lies there (vmsilod follows no link, but a guest can still rename
    folders inside its share), and either way one VM would reach another's files."""
    problems = []
    sources = _share_sources(vms)
    for vm, option, path, readonly in sources:
        inner = _components(path)
        for other_vm, other_option, other_path, other_readonly in sources:
            outer = _components(other_path)
            if option == other_option:
                continue
            if len(outer) < len(inner) and inner[: len(outer)] == outer:
                problems.append(
                    f"{option}: {path} is inside {other_path}, which {other_option} shares; "
                    "shares may not contain one another (a guest writing in the outer folder "
                    "could swap the folders on the way to the inner one, and reaches its "
                    "files): share only the outer folder, or move the inner one out of it")
                break
            if (outer == inner and vm != other_vm and not readonly and not other_readonly
                    and other_option < option):  # fmt: skip
                problems.append(
                    f"{option}: {path} is also shared read-write by {other_option}; two VMs "
                    "may not both write one folder (each would reach the other's files): give "
                    "each VM its own folder, or set readonly = true in all but one of them")
                break
    return problems


def _derived(config: VmsiloConfig) -> list[str]:
    try:
        resolved = resolve(config)
    except DerivationError as exc:
        return [f"netvmRange: {exc}"]
    problems = []
    tap_owner: dict[str, str] = {}
    mac_owner: dict[str, str] = {}
    for link in resolved.links:
        if link.bridge:
            tap_owner[link.bridge] = f"the bridge of the link {link.netvm}-{link.client}"
    for name, vm in resolved.vms.items():
        if len(vm.interfaces) > MAX_INTERFACES:
            problems.append(
                f"{vm_path(name, 'network', 'interfaces')}: {len(vm.interfaces)} interfaces "
                f"(netvm links included); at most {MAX_INTERFACES} fit in PCI slots 0x16-0x1f, "
                "remove some"
            )
        for if_name, interface in vm.interfaces.items():
            where = f"VM {name!r} interface {if_name!r}"
            configured = if_name in config.vms[name].network.interfaces
            if interface.tap_name in tap_owner:
                problems.append(
                    f"{interface_path(name, if_name, 'tap', 'name')}: TAP name "
                    f"{interface.tap_name!r} is also used by {tap_owner[interface.tap_name]};"
                    " set a different tap.name"
                )
            else:
                tap_owner[interface.tap_name] = where
            if interface.mac in mac_owner:
                path = (
                    interface_path(name, if_name, "macAddress")
                    if configured
                    else vm_path(name, "network", "netvm")
                )
                problems.append(
                    f"{path}: MAC address {interface.mac} is also used by "
                    f"{mac_owner[interface.mac]}; "
                    "set a different macAddress"
                )
            else:
                mac_owner[interface.mac] = where
    return problems


def _cycles(graph: Mapping[str, list[str]]) -> list[list[str]]:
    """Each elementary cycle once, as found by depth-first search in name order, rotated so
    that it starts at its smallest name."""
    found: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()
    done: set[str] = set()

    def visit(node: str, stack: list[str]) -> None:
        if node in stack:
            cycle = stack[stack.index(node) :]
            start = cycle.index(min(cycle))
            rotated = tuple(cycle[start:] + cycle[:start])
            if rotated not in seen:
                seen.add(rotated)
                found.append(list(rotated))
            return
        if node in done:
            return
        stack.append(node)
        for target in sorted(graph.get(node, [])):
            visit(target, stack)
        stack.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node, [])
    return found


def _listing(label: str, names: Iterable[str]) -> str:
    listed = sorted(names)
    return f" ({label}: {', '.join(listed)})" if listed else ""
