"""TCP throughput from a VM to the "internet" (issue 5): through a netvm VM vs. through a
direct host bridge, in one run.

A real vmsilod runs three VMs: ``gate`` (a netvm whose uplink is the host: ``netvm =
"host"``), its client ``c1``, and ``flat``, whose interface is a TAP in a host bridge that is
wired straight to the internet namespace. The internet namespace runs a sink that times each
connection from its first byte to its end and answers with the byte count and seconds.

- measured: ``c1`` → gate (its nftables forward + masquerade) → host (NAT) → internet
- baseline: ``flat`` → host bridge → internet (no routing, no NAT, no second guest)

Both senders are the same python3 loop in the guest (64 KiB writes), alternating, 5 rounds
of 64 MiB.
Run as root: ``.venv/bin/python -m bench.network``
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from tests.support.daemon import RunningDaemon
from tests.support.images import build_default_image, build_image_for

from bench.common import Comparison, Sample, print_comparisons

ROUNDS = 5
MIB = 64
NETNS = f"vmsilo-bench-inet-{os.getpid()}"
UPLINK = "vmsb-up"
BRIDGE = "vmsb-br"
BRIDGE_PORT = "vmsb-lan"
SINK_PORT = 9000

CONFIG = f"""
enable = true
user = "nobody"
netvmRange = "10.232.0.0/16"
hostNetworking.nat = {{ enable = true, interface = "{UPLINK}" }}

[vms.gate]
memory = 512
cpus = 1
rootOverlay.type = "tmpfs"
gpu = false
network = {{ isNetvm = true, netvm = "host" }}

[vms.c1]
memory = 512
cpus = 1
rootOverlay.type = "tmpfs"
gpu = false
network.netvm = "gate"

[vms.flat]
memory = 512
cpus = 1
rootOverlay.type = "tmpfs"
gpu = false
network.interfaces.lan = {{ tap = {{ bridge = "{BRIDGE}" }}, addresses = ["203.0.113.10/24"] }}
"""

SINK = (
    "import socket,time\n"
    "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    f"s.bind(('0.0.0.0', {SINK_PORT})); s.listen()\n"
    "while True:\n"
    "    c, _ = s.accept(); n = 0; t0 = None\n"
    "    while True:\n"
    "        d = c.recv(1 << 16)\n"
    "        if not d: break\n"
    "        t0 = t0 or time.monotonic(); n += len(d)\n"
    "    c.sendall(f'{n} {time.monotonic() - (t0 or time.monotonic())}'.encode()); c.close()\n"
)
SEND = (
    "import socket,sys\n"
    "s=socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=120)\n"
    "buf=b'x'*65536; left=int(sys.argv[3]) << 20\n"
    "while left > 0: s.sendall(buf); left -= len(buf)\n"
    "s.shutdown(socket.SHUT_WR); print(s.recv(100).decode())\n"
)


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def netns(*argv: str) -> list[str]:
    return ["ip", "netns", "exec", NETNS, *argv]


@contextmanager
def internet() -> Iterator[None]:
    sh("ip", "netns", "add", NETNS)
    sink = None
    try:
        sh("ip", "link", "add", UPLINK, "type", "veth", "peer", "name", "up1", "netns", NETNS)
        sh("ip", "addr", "add", "198.51.100.1/24", "dev", UPLINK)
        sh("ip", "link", "set", UPLINK, "up")
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
        sh("ip", "link", "set", BRIDGE, "up")
        sh("ip", "link", "add", BRIDGE_PORT, "type", "veth", "peer", "name", "lan1",
           "netns", NETNS)
        sh("ip", "link", "set", BRIDGE_PORT, "master", BRIDGE, "up")
        sh(*netns("ip", "link", "set", "lo", "up"))
        sh(*netns("ip", "addr", "add", "198.51.100.2/24", "dev", "up1"))
        sh(*netns("ip", "addr", "add", "203.0.113.1/24", "dev", "lan1"))
        sh(*netns("ip", "link", "set", "up1", "up"))
        sh(*netns("ip", "link", "set", "lan1", "up"))
        sink = subprocess.Popen(netns(sys.executable, "-c", SINK))
        yield
    finally:
        if sink is not None:
            sink.kill()
            sink.wait()
        for link in (UPLINK, BRIDGE_PORT, BRIDGE):
            subprocess.run(["ip", "link", "del", link], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True, check=False)


def throughput(daemon: RunningDaemon, vm: str, server: str) -> float:
    """MB/s as the sink saw it."""
    result = daemon.cli("vm-run", vm, "python3", "-c", SEND, server, str(SINK_PORT), str(MIB),
                        timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"{vm}: {result.stderr.decode(errors='replace')}")
    count, seconds = result.stdout.decode().split()
    return int(count) / float(seconds) / 1e6


def main() -> None:
    console = Console()
    console.print("building or reusing the images (default and netvm)...")
    build_default_image()
    build_image_for(CONFIG, "gate")
    with internet():
        daemon = RunningDaemon(CONFIG)
        daemon.start()
        try:
            for vm in ("c1", "flat"):
                console.print(f"starting {vm}...")
                result = daemon.cli("vm-start", vm, timeout=400)
                if result.returncode != 0:
                    raise RuntimeError(result.stderr.decode(errors="replace"))
            via_netvm, via_bridge = [], []
            for round_number in range(1, ROUNDS + 1):
                via_netvm.append(throughput(daemon, "c1", "198.51.100.2"))
                via_bridge.append(throughput(daemon, "flat", "203.0.113.1"))
                console.print(f"round {round_number}/{ROUNDS}: netvm {via_netvm[-1]:.1f} MB/s, "
                              f"bridge {via_bridge[-1]:.1f} MB/s")
        finally:
            daemon.stop()
    print_comparisons("Network throughput (issue 5)", [
        Comparison(
            f"TCP throughput to the internet, {MIB} MiB: through a netvm VM vs. a host bridge",
            Sample("via netvm", via_netvm, "MB/s"),
            Sample("via host bridge", via_bridge, "MB/s"),
            higher_is_better=True,
        ),
    ], console)


if __name__ == "__main__":
    main()
