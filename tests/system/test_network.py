"""Networking with real VMs: a netvm VM routing two clients, a client of the host, and an
"internet" namespace with a web-ish service and a DNS server behind the host's uplink.

    internet netns (198.51.100.2: TCP 8080 tells the peer's address, DNS for www.example.test)
        | veth vmst-up (198.51.100.1 on the host; hostNetworking.nat.interface)
      host --- netvm "gate" (netvm = "host"; isNetvm) --- clients "c1", "c2"
        \\--- "direct" (netvm = "host")

All four VMs boot once for the module (under TCG that is the slow part).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import RunningDaemon
from tests.support.images import build_image_for

INTERNET_NS = f"vmsilo-inet-{os.getpid()}"
UPLINK = "vmst-up"
UPLINK_ADDRESS = "198.51.100.1"
SERVER = "198.51.100.2"
NAME = "www.example.net"  # not .test: unbound answers special-use names itself
HOST_PORT = 8091

CONFIG = f"""
enable = true
user = "nobody"
netvmRange = "10.231.0.0/16"
hostNetworking.nat = {{ enable = true, interface = "{UPLINK}" }}

[vms.gate]
memory = 512
cpus = 1
sharedHome = false
gpu = false
sound.playback = false
rootOverlay.type = "tmpfs"
network = {{ isNetvm = true, netvm = "host", nameservers = ["{SERVER}"] }}

[vms.c1]
memory = 512
cpus = 1
sharedHome = false
gpu = false
sound.playback = false
rootOverlay.type = "tmpfs"
network.netvm = "gate"

[vms.c2]
memory = 512
cpus = 1
sharedHome = false
gpu = false
sound.playback = false
rootOverlay.type = "tmpfs"
network.netvm = "gate"

[vms.direct]
memory = 512
cpus = 1
sharedHome = false
gpu = false
sound.playback = false
rootOverlay.type = "tmpfs"
network = {{ netvm = "host", nameservers = ["{SERVER}"] }}
"""

# Prints the address the server saw, or exits 1 when no connection is made in time.
CONNECT = (
    "import socket,sys\n"
    "s=socket.socket(); s.settimeout(3)\n"
    "if len(sys.argv) > 3: s.bind((sys.argv[3], 0))\n"
    "try: s.connect((sys.argv[1], int(sys.argv[2])))\n"
    "except OSError as e: print(type(e).__name__); sys.exit(1)\n"
    "print(s.recv(100).decode())\n"
)
SERVE = (
    "import socket,sys\n"
    "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind((sys.argv[1], int(sys.argv[2]))); s.listen()\n"
    "while True:\n"
    "    c, peer = s.accept(); c.sendall(peer[0].encode()); c.close()\n"
)


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def in_internet(*argv: str) -> list[str]:
    return ["ip", "netns", "exec", INTERNET_NS, *argv]


@pytest.fixture(scope="module")
def internet() -> Iterator[None]:
    sh("ip", "netns", "add", INTERNET_NS)
    servers: list[subprocess.Popen[bytes]] = []
    try:
        sh("ip", "link", "add", UPLINK, "type", "veth", "peer", "name", "up1",
           "netns", INTERNET_NS)
        sh("ip", "addr", "add", f"{UPLINK_ADDRESS}/24", "dev", UPLINK)
        sh("ip", "link", "set", UPLINK, "up")
        sh(*in_internet("ip", "link", "set", "lo", "up"))
        sh(*in_internet("ip", "addr", "add", f"{SERVER}/24", "dev", "up1"))
        sh(*in_internet("ip", "link", "set", "up1", "up"))
        dns = Path(__file__).parents[1] / "support" / "dns_server.py"
        servers.append(subprocess.Popen(in_internet(sys.executable, "-c", SERVE, SERVER, "8080")))
        servers.append(subprocess.Popen(
            in_internet(sys.executable, str(dns), SERVER, f"{NAME}={SERVER}")))
        # A service on the host itself, which no VM may reach.
        servers.append(subprocess.Popen([sys.executable, "-c", SERVE, "0.0.0.0",
                                         str(HOST_PORT)]))
        yield
    finally:
        for server in servers:
            server.kill()
            server.wait()
        subprocess.run(["ip", "link", "del", UPLINK], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", INTERNET_NS], capture_output=True, check=False)


@pytest.fixture(scope="module")
def net(test_image: None, internet: None) -> Iterator[RunningDaemon]:
    build_image_for(CONFIG, "gate")
    daemon = RunningDaemon(CONFIG)
    daemon.start()
    try:
        for vm in ("c1", "c2", "direct"):  # c1 starts gate first: its netvm
            result = daemon.cli("vm-start", vm)
            assert result.returncode == 0, result.stderr.decode() + daemon.log()
        yield daemon
    finally:
        daemon.stop()


def run(daemon: RunningDaemon, vm: str, *argv: str, user: str = "user") -> tuple[int, str]:
    result = daemon.cli("vm-run", "-u", user, vm, *argv, timeout=120)
    return result.returncode, result.stdout.decode().strip() + result.stderr.decode().strip()


def connect(daemon: RunningDaemon, vm: str, address: str, port: int,
            source: str | None = None) -> str | None:
    code, out = run(daemon, vm, "python3", "-c", CONNECT, address, str(port),
                    *([source] if source else []))
    return out if code == 0 else None


def resolved(daemon: RunningDaemon) -> dict[str, object]:
    result = daemon.cli("vmsilo", "config", "show", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def address_of(daemon: RunningDaemon, vm: str, interface: str = "upstream") -> str:
    document = resolved(daemon)
    vms = document["vms"]  # type: ignore[index]
    cidr = vms[vm]["network"]["interfaces"][interface]["addresses"][0]
    return str(cidr).split("/")[0]


def test_guest_interfaces_are_named_and_addressed(net: RunningDaemon) -> None:
    code, out = run(net, "gate", "ip", "-br", "addr")
    assert code == 0, out
    names = {line.split()[0] for line in out.splitlines()}
    assert {"upstream", "c1", "c2"} <= names, out
    assert address_of(net, "gate", "c1") in out
    code, out = run(net, "c1", "ip", "route")
    assert code == 0 and f"default via {address_of(net, 'gate', 'c1')} dev upstream" in out, out


def test_client_reaches_the_internet_through_the_netvm(net: RunningDaemon) -> None:
    # The internet sees the host's uplink: the netvm masqueraded, then the host.
    assert connect(net, "c1", SERVER, 8080) == UPLINK_ADDRESS


def test_client_of_the_host_reaches_the_internet(net: RunningDaemon) -> None:
    assert connect(net, "direct", SERVER, 8080) == UPLINK_ADDRESS


def test_no_vm_opens_connections_to_the_host(net: RunningDaemon) -> None:
    gateway = address_of(net, "gate", "c1")  # ensure the config is what we think
    assert gateway
    host_end = resolved(net)["vms"]["direct"]["network"]["interfaces"]["upstream"]  # type: ignore[index]
    host_address = str(host_end["tap"]["hostAddress"]).split("/")[0]
    assert connect(net, "direct", host_address, HOST_PORT) is None
    assert connect(net, "direct", UPLINK_ADDRESS, HOST_PORT) is None
    assert connect(net, "c1", UPLINK_ADDRESS, HOST_PORT) is None


def test_clients_of_one_netvm_cannot_reach_each_other(net: RunningDaemon) -> None:
    c2 = address_of(net, "c2")
    started = net.cli("vm-run", "-u", "root", "c2", "systemd-run", "--unit=listen",
                      "python3", "-c", SERVE, c2, "8082")
    assert started.returncode == 0, started.stderr
    assert connect(net, "c2", c2, 8082) == c2  # it listens
    assert connect(net, "c1", c2, 8082) is None


def test_a_spoofed_source_is_dropped(net: RunningDaemon) -> None:
    spoofed = "10.231.99.9"
    code, out = run(net, "c1", "ip", "addr", "add", f"{spoofed}/32", "dev", "upstream",
                    user="root")
    assert code == 0, out
    try:
        assert connect(net, "c1", SERVER, 8080, source=spoofed) is None
        assert connect(net, "c1", SERVER, 8080, source=address_of(net, "c1")) == UPLINK_ADDRESS
    finally:
        run(net, "c1", "ip", "addr", "del", f"{spoofed}/32", "dev", "upstream", user="root")


def test_names_resolve_through_the_netvm(net: RunningDaemon) -> None:
    code, out = run(net, "c1", "cat", "/etc/resolv.conf")
    assert f"nameserver {address_of(net, 'gate', 'c1')}" in out, out
    code, out = run(net, "c1", "getent", "hosts", NAME)
    assert code == 0 and out.split()[0] == SERVER, out
    code, out = run(net, "c1", "getent", "hosts", "nowhere.example.net")
    assert code != 0, out


def test_net_show_lists_devices_and_rules(net: RunningDaemon) -> None:
    result = net.cli("vmsilo", "net", "show")
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    for needle in ("gate", "c1", "c2", "direct", "vmsilo-c1", "vmsl-"):
        assert needle in out, out


def test_stopping_a_vm_removes_its_host_network(net: RunningDaemon) -> None:
    taps = [i["tap"]["name"]  # type: ignore[index]
            for i in resolved(net)["vms"]["direct"]["network"]["interfaces"].values()]  # type: ignore[index]
    assert all(Path(f"/sys/class/net/{tap}").exists() for tap in taps)
    result = net.cli("vm-stop", "direct")
    assert result.returncode == 0, result.stderr
    assert not any(Path(f"/sys/class/net/{tap}").exists() for tap in taps)
    tables = sh("nft", "-j", "list", "tables")
    assert "vmsilo-direct" not in tables


def _host_traces(vm: str, taps: list[str]) -> list[str]:
    """What of ``vm``'s host network still exists: its TAPs and its nftables tables."""
    left = [tap for tap in taps if Path(f"/sys/class/net/{tap}").exists()]
    tables = json.loads(sh("nft", "-j", "list", "tables"))["nftables"]
    left += [f"{t['table']['family']} {t['table']['name']}" for t in tables
             if "table" in t and t["table"]["name"] == f"vmsilo-{vm}"]
    return left


def _taps(daemon: RunningDaemon, vm: str) -> list[str]:
    interfaces = resolved(daemon)["vms"][vm]["network"]["interfaces"]  # type: ignore[index]
    return [str(i["tap"]["name"]) for i in interfaces.values()]


def test_a_crashed_vm_leaves_nothing_behind(net: RunningDaemon) -> None:
    taps = _taps(net, "c2")
    assert _host_traces("c2", taps)  # it runs: its TAP and tables exist
    pid = net.status()["c2"]["pid"]
    assert isinstance(pid, int)
    os.kill(pid, 9)
    net.wait_for_state("c2", "failed", timeout=60)
    assert _host_traces("c2", taps) == []


def test_a_re_adopted_vm_still_cleans_up(net: RunningDaemon) -> None:
    taps = _taps(net, "c1")
    net.restart_daemon_only()
    assert net.status()["c1"]["state"] == "running"
    assert connect(net, "c1", SERVER, 8080) == UPLINK_ADDRESS  # its network kept working
    result = net.cli("vm-stop", "c1")
    assert result.returncode == 0, result.stderr
    assert _host_traces("c1", taps) == []
