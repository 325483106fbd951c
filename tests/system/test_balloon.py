"""Memory balancing with two real VMs and the vmsilo-balloond vmsilod starts.

This machine has far more memory than two test guests could ever press on, so balloond reads
the host's memory from a file standing for a 4 GiB host with 400 MiB available (its
``--host-meminfo``, given through ``vmsilo-balloond.extraArgs``); everything else is real:
QEMU's balloon, the guests' own memory statistics, the policy, the status file and command.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.daemon import RunningDaemon

MIB = 1 << 20
FLOOR = 256 * MIB  # criticalGuestAvailable

CONFIG = """
enable = true
user = "nobody"

[vmsilo-balloond]
pollInterval = "1s"
minPollInterval = "250ms"
criticalGuestAvailable = "256m"
extraArgs = ["--host-meminfo", "{root}/host-meminfo"]

[vms.busy]
memory = 1024
cpus = 1
sharedHome = false
gpu = false
sound.playback = false

[vms.idle]
memory = 1024
cpus = 1
sharedHome = false
gpu = false
sound.playback = false
"""

HOST_MEMINFO = (
    "MemTotal:        4194304 kB\nMemFree:          204800 kB\nMemAvailable:     409600 kB\n"
)
# Holds 450 MiB of written (so really used) memory until killed.
HOLD = "import time\nb = b'\\x01' * (450 << 20)\ntime.sleep(3600)\n"


@pytest.fixture(scope="module")
def balloons(test_image: None) -> Iterator[RunningDaemon]:
    daemon = RunningDaemon("")
    (daemon.root / "host-meminfo").write_text(HOST_MEMINFO)
    daemon.config_path.write_text(CONFIG.format(root=daemon.root))
    daemon.start()
    try:
        for vm in ("busy", "idle"):
            result = daemon.cli("vm-start", vm)
            assert result.returncode == 0, result.stderr.decode() + daemon.log()
        yield daemon
    finally:
        daemon.stop()


def status(daemon: RunningDaemon) -> dict[str, Any]:
    path = daemon.root / "run" / "balloond.json"
    return json.loads(path.read_text()) if path.exists() else {}  # type: ignore[no-any-return]


def wait_until(daemon: RunningDaemon, what: str, check: Callable[[dict[str, Any]], bool],
               seen: list[dict[str, Any]], timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        last = status(daemon).get("vms", {})
        if last:
            seen.append(last)
        if all(vm in last and "actual" in last[vm] for vm in ("busy", "idle")) and check(last):
            return last
        time.sleep(0.5)
    raise AssertionError(f"{what} did not happen in {timeout} s: {json.dumps(last, indent=1)}"
                         + daemon.log()[-3000:])


def test_the_idle_guest_gives_memory_back_and_the_busy_one_takes_it(
    balloons: RunningDaemon,
) -> None:
    seen: list[dict[str, Any]] = []
    before = wait_until(
        balloons, "both balloons inflating",
        lambda vms: all(vms[vm]["actual"] >= 48 * MIB for vm in ("busy", "idle")), seen)
    started = balloons.cli("vm-run", "-u", "root", "busy", "systemd-run", "--unit=hold",
                           "python3", "-c", HOLD)
    assert started.returncode == 0, started.stderr
    after = wait_until(
        balloons, "the busy guest's balloon deflating",
        lambda vms: vms["busy"]["actual"] <= before["busy"]["actual"] // 4, seen)
    # The idle guest keeps giving its memory back meanwhile.
    assert after["idle"]["actual"] >= 48 * MIB, after
    # No tick ever left a guest with less available memory than the floor because of its
    # balloon: whenever a guest was under the floor, balloond was not inflating it.
    for sample in seen:
        for name, row in sample.items():
            available = row.get("guestAvailable")
            if available is not None and available < FLOOR:
                assert row.get("delta", 0) <= 0, (name, row)
    idle_floor = min(s["idle"]["guestAvailable"] for s in seen
                     if s.get("idle", {}).get("guestAvailable") is not None)
    assert idle_floor >= FLOOR, idle_floor


def test_balloon_status_shows_each_vm_and_the_host(balloons: RunningDaemon) -> None:
    result = balloons.cli("vmsilo", "balloon", "status")
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert "host: 400 MiB available of 4096 MiB" in out, out
    for needle in ("busy", "idle", "guest available", "last decision"):
        assert needle in out, out
    as_json = json.loads(balloons.cli("vmsilo", "balloon", "status", "--json").stdout)
    assert set(as_json["vms"]) == {"busy", "idle"}
    assert as_json["cpuSecondsPerTick"] > 0
