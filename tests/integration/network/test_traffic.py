"""Real traffic through applied plans. A TAP without a VM carries nothing, so after applying,
each TAP is replaced by a veth of the same name (the rules match by name) whose other end sits
in a "VM" namespace with the guest's MAC and addresses."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator

import pytest

from vmsilo.host import proc
from vmsilo.network import plan_vm
from vmsilo.network.apply import apply_plan, configure_switch_port, remove_plan
from vmsilo.network.netlink import Netlink

from .conftest import resolved_config, sh

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

SERVE = (
    "import socket,sys\n"
    "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind((sys.argv[1], int(sys.argv[2]))); s.listen()\n"
    "while True:\n"
    "    c, peer = s.accept(); c.sendall(peer[0].encode()); c.close()\n"
)
CONNECT = (
    "import socket,sys\n"
    "s=socket.socket(); s.settimeout(1.5)\n"
    "if len(sys.argv) > 3: s.bind((sys.argv[3], 0))\n"
    "s.connect((sys.argv[1], int(sys.argv[2]))); print(s.recv(100).decode())\n"
)


@pytest.fixture
def serve() -> Iterator[Callable[[str, str, int], None]]:
    servers = []

    def start(netns: str, address: str, port: int) -> None:
        servers.append(
            proc.spawn(
                ["ip", "netns", "exec", netns, sys.executable, "-c", SERVE, address, str(port)]
            )
        )
        probe = (
            "import socket,time\n"
            "for _ in range(100):\n"
            f" try: socket.create_connection(('{address}', {port}), 0.2).close(); break\n"
            " except OSError: time.sleep(0.05)\n"
        )
        proc.run(["ip", "netns", "exec", netns, sys.executable, "-c", probe])

    yield start
    for server in servers:
        server.kill()
        server.wait()


def connect(netns: str, address: str, port: int, source: str | None = None) -> str | None:
    """The peer address the server saw, or None when no connection was made."""
    argv = ["ip", "netns", "exec", netns, sys.executable, "-c", CONNECT, address, str(port)]
    result = proc.run(argv + ([source] if source else []), check=False, timeout=10)
    return result.stdout.strip() if result.returncode == 0 else None


def stand_in(host: str, tap: str, vm: str, mac: str, addresses: list[str]) -> None:
    """Replace ``tap`` in ``host`` by a veth whose peer ``eth0`` lives in ``vm``."""
    master = sh(host, "ip", "-o", "link", "show", tap).split(" master ")
    bridge = master[1].split()[0] if len(master) > 1 else None
    host_addresses = sh(host, "ip", "-o", "-4", "addr", "show", "dev", tap).split()
    host_address = host_addresses[3] if host_addresses else None
    sh(host, "ip", "link", "del", tap)
    sh(host, "ip", "link", "add", tap, "type", "veth", "peer", "name", "eth0", "netns", vm)
    if bridge:
        sh(host, "ip", "link", "set", tap, "master", bridge)
    if host_address:
        sh(host, "ip", "addr", "add", host_address, "dev", tap)
        sh(host, "sysctl", "-q", "-w", f"net.ipv4.conf.{tap}.forwarding=1")
    sh(host, "ip", "link", "set", tap, "up")
    sh(vm, "ip", "link", "set", "eth0", "address", mac)
    for address in addresses:
        sh(vm, "ip", "addr", "add", address, "dev", "eth0")
    sh(vm, "ip", "link", "set", "eth0", "up")


HOST_NAT = """
enable = true
user = "nobody"
hostNetworking.nat = { enable = true, interface = "up0" }
[vms.web]
network.netvm = "host"
"""


def test_host_netvm_nat_works_and_the_vm_cannot_reach_the_host(
    make_netns: Callable[[], str], serve: Callable[[str, str, int], None]
) -> None:
    host, vm, internet = make_netns(), make_netns(), make_netns()
    sh(host, "ip", "link", "add", "up0", "type", "veth", "peer", "name", "up1", "netns", internet)
    sh(host, "ip", "addr", "add", "192.0.2.1/24", "dev", "up0")
    sh(host, "ip", "link", "set", "up0", "up")
    sh(internet, "ip", "addr", "add", "192.0.2.2/24", "dev", "up1")
    sh(internet, "ip", "link", "set", "up1", "up")
    plan = plan_vm(resolved_config(HOST_NAT), "web")
    apply_plan(plan, netns=host)
    (tap,) = plan.taps
    stand_in(host, tap.name, vm, tap.guest_mac, ["10.200.0.1/31"])
    sh(vm, "ip", "route", "add", "default", "via", "10.200.0.0")

    serve(internet, "192.0.2.2", 8080)
    serve(host, "0.0.0.0", 8081)
    serve(vm, "10.200.0.1", 8082)
    # The internet sees the host's uplink address: masqueraded.
    assert connect(vm, "192.0.2.2", 8080) == "192.0.2.1"
    # No new connection from the VM to the host, on any of its addresses.
    assert connect(vm, "10.200.0.0", 8081) is None
    assert connect(vm, "192.0.2.1", 8081) is None
    # The host may connect to the VM: the VM's replies pass.
    assert connect(host, "10.200.0.1", 8082) == "10.200.0.0"
    # Nothing from the internet gets in, even with a route.
    sh(internet, "ip", "route", "add", "10.200.0.0/31", "via", "192.0.2.1")
    assert connect(internet, "10.200.0.1", 8082) is None
    # A spoofed source is dropped.
    sh(vm, "ip", "addr", "add", "10.200.0.9/32", "dev", "eth0")
    assert connect(vm, "192.0.2.2", 8080, source="10.200.0.9") is None

    remove_plan(plan, netns=host)
    # Our table is gone: the VM's address reaches the internet unmasqueraded (the stand-in
    # veth is not ours to delete, and the internet has a route back).
    assert connect(vm, "192.0.2.2", 8080) == "10.200.0.1"


SWITCH = """
enable = true
user = "nobody"
[vms.a.network.interfaces.sw]
type = "vm-switch"
addresses = ["10.5.0.2/24"]
vmNetwork = { name = "office", receiveBroadcast = true }
[vms.b.network.interfaces.sw]
type = "vm-switch"
addresses = ["10.5.0.3/24"]
vmNetwork = { name = "office" }
"""


def test_vm_switch_peers_talk_but_cannot_spoof_or_reach_the_host(
    make_netns: Callable[[], str], serve: Callable[[str, str, int], None]
) -> None:
    host, vm_a, vm_b = make_netns(), make_netns(), make_netns()
    resolved = resolved_config(SWITCH)
    plans = {name: plan_vm(resolved, name) for name in ("a", "b")}
    for name, vm in (("a", vm_a), ("b", vm_b)):
        apply_plan(plans[name], netns=host)
        (tap,) = plans[name].taps
        address = resolved.vms[name].interfaces["sw"].addresses[0]
        stand_in(host, tap.name, vm, tap.guest_mac, [address])
        with Netlink(host) as link:  # the stand-in veth gets the TAP's port settings
            port, bridge = link.index(tap.name), link.index("vmsw-office")
            assert port is not None and bridge is not None
            configure_switch_port(link, port, bridge, tap)
    sh(host, "ip", "addr", "add", "10.5.0.1/24", "dev", "vmsw-office")
    serve(host, "10.5.0.1", 8081)
    serve(vm_a, "10.5.0.2", 8080)

    assert connect(vm_b, "10.5.0.2", 8080) == "10.5.0.3"
    # Neighbour proxying: with neither member answering ARP, they still find each other,
    # because the bridge answers for them.
    for vm in (vm_a, vm_b):
        sh(vm, "sysctl", "-q", "-w", "net.ipv4.conf.eth0.arp_ignore=8")
        sh(vm, "ip", "neigh", "flush", "all")
    assert connect(vm_b, "10.5.0.2", 8080) == "10.5.0.3"
    for vm in (vm_a, vm_b):
        sh(vm, "sysctl", "-q", "-w", "net.ipv4.conf.eth0.arp_ignore=0")
    assert connect(vm_b, "10.5.0.1", 8081) is None  # the host is not on the network
    sh(vm_b, "ip", "addr", "add", "10.5.0.9/24", "dev", "eth0")
    assert connect(vm_b, "10.5.0.2", 8080, source="10.5.0.9") is None
    sh(vm_b, "ip", "link", "set", "eth0", "address", "52:00:00:00:00:99")
    sh(vm_b, "ip", "neigh", "flush", "all")
    sh(vm_a, "ip", "neigh", "flush", "all")
    assert connect(vm_b, "10.5.0.2", 8080) is None
