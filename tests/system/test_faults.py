"""Bad situations get clear errors and change nothing: a kernel QEMU cannot load, a kernel
that panics, an agent that never answers, no space for the overlay, a bad config on reload.
These VMs live on a daemon of their own, whose state directory is a small filesystem."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import RunningDaemon

pytestmark = pytest.mark.timeout(900)

FAULT_CONFIG = """
enable = true
user = "root"

[vms.badkernel]
kernel = "/etc/hostname"
sharedHome = false
gpu = false
sound.playback = false
rootOverlay.type = "tmpfs"

[vms.panics]
initramfs = "/etc/hostname"
memory = 512
sharedHome = false
gpu = false
sound.playback = false
rootOverlay.type = "tmpfs"

[vms.mute]
memory = 512
cpus = 1
kernelParams = ["systemd.mask=vmsilo-agent.service"]
sharedHome = false
gpu = false
sound.playback = false
rootOverlay.type = "tmpfs"

[vms.bulky]
memory = 512
sharedHome = false
gpu = false
sound.playback = false

[vms.wired]
sharedHome = false
gpu = false
sound.playback = false
network.interfaces.wan = { tap.bridge = "vmsilo-nobr", addresses = ["10.9.0.2/24"] }

[vms.fine]
memory = 512
cpus = 1
sharedHome = false
gpu = false
sound.playback = false
rootOverlay.type = "tmpfs"
"""


@pytest.fixture(scope="module")
def faults(test_image: None) -> Iterator[RunningDaemon]:
    d = RunningDaemon(FAULT_CONFIG, extra_env={"VMSILO_AGENT_TIMEOUT": "45"})
    state = d.root / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,mode=0755", "tmpfs", str(state)],
                   check=True)
    d.start()
    try:
        yield d
    finally:
        d.stop()


def _nothing_left(d: RunningDaemon, vm: str) -> None:
    assert not (d.root / "run" / vm).exists()
    assert not (d.root / "state" / vm / "overlay.raw").exists()


def test_a_kernel_qemu_cannot_load(faults: RunningDaemon) -> None:
    result = faults.cli("vm-start", "badkernel")
    assert result.returncode == 1
    message = result.stderr.decode()
    assert "VM badkernel failed to start: VMM: " in message
    assert "vmm.log" in message
    row = faults.status()["badkernel"]
    assert row["state"] == "failed"
    assert str(row["log"]).endswith("logs/badkernel/vmm.log")
    assert b"kernel" in Path(str(row["log"])).read_bytes().lower()
    _nothing_left(faults, "badkernel")


def test_a_kernel_that_does_not_boot_points_at_the_console_log(faults: RunningDaemon) -> None:
    result = faults.cli("vm-run", "panics", "true")
    assert result.returncode == 255
    message = result.stderr.decode()
    assert "VM panics failed to start: agent: the VMM exited during boot" in message
    assert "logs/panics/console.log" in message
    console = faults.root / "state" / "logs" / "panics" / "console.log"
    assert b"Kernel panic" in console.read_bytes()
    assert faults.status()["panics"]["state"] == "failed"
    _nothing_left(faults, "panics")


def test_an_agent_that_never_says_hello_times_out_naming_the_log(
    faults: RunningDaemon,
) -> None:
    result = faults.cli("vm-start", "mute")
    assert result.returncode == 1
    message = result.stderr.decode()
    assert "agent: the guest agent did not say hello within 45 s" in message
    assert "logs/mute/console.log" in message
    row = faults.status()["mute"]
    assert row["state"] == "failed" and row["pid"] is None
    _nothing_left(faults, "mute")
    # The console log shows how far the guest got: our init switched to the root, the
    # system came up to its console login; only the agent is missing.
    console = (faults.root / "state/logs/mute/console.log").read_bytes()
    assert b"vmsilo-init: root /dev/vda (erofs) mounted" in console
    assert b"root@mute" in console


def test_no_space_for_the_overlay_leaves_nothing_behind(faults: RunningDaemon) -> None:
    result = faults.cli("vm-start", "bulky")
    assert result.returncode == 1
    message = result.stderr.decode()
    assert "for the root overlay (at least 256 MiB needed)" in message
    assert 'rootOverlay.type = "tmpfs"' in message
    assert faults.status()["bulky"]["state"] == "failed"
    _nothing_left(faults, "bulky")
    assert not list((faults.root / "run").glob("bulky*"))


def test_a_missing_bridge_is_named_with_how_to_create_it(faults: RunningDaemon) -> None:
    result = faults.cli("vm-start", "wired")
    assert result.returncode == 1
    message = result.stderr.decode()
    assert (
        "vms.wired.network.interfaces.wan.tap.bridge: the host has no bridge 'vmsilo-nobr'"
        in message
    )
    assert "ip link add vmsilo-nobr type bridge" in message
    assert not Path("/sys/class/net/wired-22").exists()  # no TAP was left behind
    _nothing_left(faults, "wired")


def test_reload_applies_to_stopped_vms_now_and_to_running_ones_at_restart(
    faults: RunningDaemon,
) -> None:
    text = FAULT_CONFIG
    fine_old = "[vms.fine]\nmemory = 512"
    assert fine_old in text
    faults.config_path.write_text(text.replace(fine_old, "[vms.fine]\nmemory = 640"))
    assert faults.cli("vmsilo", "reload").returncode == 0
    assert faults.status()["fine"]["memory"] == 640  # stopped: the new config at once
    assert faults.cli("vm-start", "fine").returncode == 0
    faults.config_path.write_text(text.replace(fine_old, "[vms.fine]\nmemory = 704"))
    reload = faults.cli("vmsilo", "reload")
    assert b"running VMs keep their old config until they restart: fine" in reload.stdout
    row = faults.status()["fine"]
    assert row["pending"] is True and row["memory"] == 640
    assert b"config change pending" in faults.cli("vmsilo", "status").stdout
    in_guest = faults.cli("vm-run", "fine", "grep", "MemTotal", "/proc/meminfo")
    assert in_guest.returncode == 0
    faults.cli("vm-stop", "fine")
    assert faults.cli("vm-start", "fine").returncode == 0
    row = faults.status()["fine"]
    assert row["pending"] is False and row["memory"] == 704
    faults.cli("vm-stop", "fine")


def test_a_bad_config_on_reload_changes_nothing(faults: RunningDaemon) -> None:
    before = faults.status()
    faults.config_path.write_text(FAULT_CONFIG + "\n[vms.fine.network]\nbogus = 1\n")
    result = faults.cli("vmsilo", "reload")
    assert result.returncode == 1
    assert b"vms.fine.network.bogus: unknown option" in result.stderr
    assert faults.status().keys() == before.keys()
    faults.config_path.write_text(FAULT_CONFIG)
