"""Guest network set-up at early boot, from the kernel command line (``protocol.netparams``).

Runs once as ``vmsilo-network.service``, before udev and systemd-networkd start, and writes:

- ``/run/systemd/network/10-vmsilo-<name>.link``: udev names each NIC by its MAC;
- ``/run/systemd/network/10-vmsilo-<name>.network``: networkd's addresses, routes and DHCP
  (never required for "online", so boot does not wait on a link without a route);
- ``/etc/resolv.conf`` (the root overlay is throw-away) when nameservers are given;
- in a netvm: IPv4 forwarding on, an nftables table that forwards and masquerades clients'
  traffic out of the uplink, drops client-to-client traffic and spoofed sources, and lets
  clients reach the netvm itself only for DNS and ping; and an unbound configuration that
  answers clients (forwarding to the netvm's own nameservers when it has some, else
  resolving recursively with DNSSEC validation).

``render`` is pure; ``main`` writes its files and loads the ruleset. Stdlib only.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from vmsilo.protocol.netparams import GuestInterface, GuestNetwork, NetParamError, decode

NETWORK_DIR = "/run/systemd/network"
RESOLV_CONF = "/etc/resolv.conf"
UNBOUND_CONF = "/run/vmsilo/unbound.conf"
NFT_RULESET = "/run/vmsilo/netvm.nft"
NETVM_TABLE = "vmsilo-netvm"
TRUST_ANCHOR = "/usr/share/dns/root.key"


def link_file(iface: GuestInterface) -> str:
    return f"[Match]\nMACAddress={iface.mac}\n\n[Link]\nName={iface.name}\n"


def network_file(iface: GuestInterface) -> str:
    has_v6 = any(a.version == 6 for a in iface.addresses)
    lines = [
        "[Match]",
        f"Name={iface.name}",
        "",
        "[Link]",
        "RequiredForOnline=no",
        "",
        "[Network]",
        f"DHCP={'ipv4' if iface.dhcp else 'no'}",
        f"LinkLocalAddressing={'ipv6' if has_v6 else 'no'}",
        "IPv6AcceptRA=no",
        "ConfigureWithoutCarrier=yes",
    ]
    lines += [f"Address={address}" for address in iface.addresses]
    for route in iface.routes:
        lines += ["", "[Route]", f"Destination={route.destination}", f"Gateway={route.via}"]
    return "\n".join(lines) + "\n"


def resolv_conf(network: GuestNetwork) -> str:
    return "".join(f"nameserver {ns}\n" for ns in network.nameservers)


def client_addresses(iface: GuestInterface) -> list[str]:
    """The client's end of a downstream link: the other address of the link's /31."""
    return [
        str(ip)
        for address in iface.addresses
        if address.version == 4 and address.network.prefixlen == 31
        for ip in address.network
        if ip != address.ip
    ]


def _set(items: list[str]) -> str:
    return "{ " + ", ".join(items) + " }"


def netvm_ruleset(network: GuestNetwork) -> str:
    """The netvm's forwarding and NAT for its clients, one table replaced atomically."""
    downstream = [i for i in network.interfaces.values() if i.downstream]
    names = _set([f'"{i.name}"' for i in downstream])
    clients = [a for i in downstream for a in client_addresses(i)]
    lines = [
        f"table inet {NETVM_TABLE}",
        f"delete table inet {NETVM_TABLE}",
        f"table inet {NETVM_TABLE} {{",
        "  chain input {",
        "    type filter hook input priority filter; policy accept;",
        f"    iifname {names} ct state established,related accept",
        f"    iifname {names} meta l4proto {{ tcp, udp }} th dport 53 accept",
        f"    iifname {names} icmp type echo-request accept",
        f"    iifname {names} drop",
        "  }",
        "  chain forward {",
        "    type filter hook forward priority filter; policy drop;",
        "    ct state established,related accept",
    ]
    for iface in downstream:
        own = client_addresses(iface)
        if own:
            lines.append(f'    iifname "{iface.name}" ip saddr != {_set(own)} drop')
        else:
            lines.append(f'    iifname "{iface.name}" drop')
    lines += [
        f"    iifname {names} oifname {names} drop",
        f"    iifname {names} meta nfproto ipv4 accept",
        "  }",
        "  chain postrouting {",
        "    type nat hook postrouting priority srcnat; policy accept;",
    ]
    if clients:
        lines.append(f"    ip saddr {_set(clients)} oifname != {names} masquerade")
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def unbound_conf(network: GuestNetwork) -> str:
    downstream = [i for i in network.interfaces.values() if i.downstream]
    clients = [a for i in downstream for a in client_addresses(i)]
    lines = [
        "server:",
        "  interface: 0.0.0.0",
        # Addresses come and go with networkd; bind to all and let access-control decide.
        "  do-ip6: no",
        "  access-control: 0.0.0.0/0 refuse",
        "  access-control: 127.0.0.0/8 allow",
        *[f"  access-control: {c}/32 allow" for c in clients],
        '  username: "unbound"',
        '  chroot: ""',
        '  directory: "/etc/unbound"',
        '  pidfile: ""',
        "  use-syslog: no",
        "  hide-identity: yes",
        "  hide-version: yes",
    ]
    forwarders = [str(ns) for ns in network.nameservers]
    if forwarders:
        # The configured nameservers are trusted to validate (as a client's would be).
        lines.append('  module-config: "iterator"')
        lines += ["", "forward-zone:", '  name: "."']
        lines += [f"  forward-addr: {ns}" for ns in forwarders]
    else:
        lines += ['  module-config: "validator iterator"', f'  trust-anchor-file: "{TRUST_ANCHOR}"']
    lines += ["", "remote-control:", "  control-enable: no"]
    return "\n".join(lines) + "\n"


def render(network: GuestNetwork) -> dict[str, str]:
    """Every file the guest needs, by path."""
    files: dict[str, str] = {}
    for iface in network.interfaces.values():
        files[f"{NETWORK_DIR}/10-vmsilo-{iface.name}.link"] = link_file(iface)
        files[f"{NETWORK_DIR}/10-vmsilo-{iface.name}.network"] = network_file(iface)
    if network.nameservers:
        files[RESOLV_CONF] = resolv_conf(network)
    if network.is_netvm:
        files[NFT_RULESET] = netvm_ruleset(network)
        files[UNBOUND_CONF] = unbound_conf(network)
    return files


def _write(path: str, content: str) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink():
        target.unlink()  # e.g. a resolv.conf pointing at a resolver we do not run
    tmp = target.with_name(target.name + ".vmsilo-tmp")
    tmp.write_text(content)
    os.chmod(tmp, 0o644)
    tmp.replace(target)


def main(argv: list[str] | None = None) -> int:
    cmdline_path = (argv or sys.argv[1:] or ["/proc/cmdline"])[0]
    try:
        network = decode(Path(cmdline_path).read_text())
    except NetParamError as exc:
        print(f"vmsilo-network: bad kernel command line: {exc}", file=sys.stderr)
        return 1
    for path, content in render(network).items():
        _write(path, content)
    if network.is_netvm:
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
        subprocess.run(["nft", "-f", NFT_RULESET], check=True)
    names = ", ".join(network.interfaces) or "none"
    print(f"vmsilo-network: interfaces {names}; netvm: {'yes' if network.is_netvm else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
