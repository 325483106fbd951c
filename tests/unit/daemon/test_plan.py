"""Config + image → launch spec: overrides, overlay kinds, disks, NICs."""

from __future__ import annotations

from pathlib import Path

from vmsilo.config import parse_config, resolve
from vmsilo.daemon.plan import launch_spec
from vmsilo.host.paths import Mode, Paths
from vmsilo.hypervisor.spec import OverlayKind

PATHS = Paths.under(Path("/srv/vmsilo"), Mode.SYSTEM)
IMAGE = Path("/srv/vmsilo/images/abc123")

CONFIG = """
user = "alice"
[vms.banking]
memory = 2048
cpus = 3
kernelParams = ["debug"]
rootOverlay = { type = "raw", size = "2G" }
additionalDisks = [{ path = "/data/bank.img", ro = true, id = "bankdata", sparse = true }]
[vms.banking.network.interfaces.wan]
tap.hostAddress = "10.0.0.254/24"
addresses = ["10.0.0.1/24"]
[vms.banking.network.interfaces.lan]
tap.bridge = "br0"

[vms.scratch]
rootOverlay.type = "tmpfs"
rootOverlay.size = "512m"
kernel = "/boot/custom-vmlinuz"
rootDisk = { path = "/data/root.ext4", ro = false }
"""


def spec_for(name: str):  # type: ignore[no-untyped-def]
    resolved = resolve(parse_config(CONFIG))
    return launch_spec(resolved.vms[name], IMAGE, PATHS)


def test_built_image_with_disk_overlay_and_nics_in_slot_order() -> None:
    spec = spec_for("banking")
    assert spec.kernel == IMAGE / "vmlinuz"
    assert spec.initrd == IMAGE / "initrd.img"
    assert spec.root.path == IMAGE / "rootfs.erofs" and spec.root.readonly
    assert spec.overlay is OverlayKind.DISK
    assert spec.overlay_disk is not None
    assert spec.overlay_disk.path == Path("/srv/vmsilo/state/banking/overlay.raw")
    assert spec.overlay_disk.discard and not spec.overlay_disk.readonly
    assert spec.overlay_size == 2 << 30
    assert (spec.memory_mb, spec.cpus, spec.cid) == (2048, 3, 3)
    assert [(n.name, n.pci_slot, n.tap) for n in spec.nics] == [
        ("lan", 0x16, "banking-22"),
        ("wan", 0x17, "banking-23"),
    ]
    (disk,) = spec.extra_disks
    assert (disk.serial, disk.readonly, disk.discard) == ("bankdata", True, True)
    assert disk.format == "raw"
    assert spec.kernel_cmdline().split()[-1] == "debug"
    assert spec.layout.runtime_dir == Path("/srv/vmsilo/run/banking")


def test_overrides_and_tmpfs_overlay() -> None:
    spec = spec_for("scratch")
    assert spec.kernel == Path("/boot/custom-vmlinuz")
    assert spec.initrd == IMAGE / "initrd.img"  # no initramfs override: the built one
    assert spec.root.path == Path("/data/root.ext4")
    assert spec.root.serial == "vmsilo-root" and not spec.root.readonly
    assert spec.overlay is OverlayKind.TMPFS and spec.overlay_disk is None
    assert "vmsilo.overlay_size=536870912" in spec.kernel_cmdline().split()
    assert spec.nics == ()
    assert spec.cid == 4


def test_guest_features_follow_gpu_and_dbus() -> None:
    def features(extra: str) -> tuple[str, ...]:
        resolved = resolve(parse_config(f'user = "alice"\n[vms.v]\n{extra}\n'))
        return launch_spec(resolved.vms["v"], IMAGE, PATHS).guest_features

    assert features("") == ("vmsilo.dbus=1", "vmsilo.wayland=1")
    assert features("gpu = false") == ("vmsilo.dbus=1",)
    assert features("gpu.wayland = false\ndbus.tray = false\ndbus.notifications = false") == ()
    assert "vmsilo.wayland=1" in launch_spec(
        resolve(parse_config('user = "alice"\n[vms.v]\n')).vms["v"], IMAGE, PATHS
    ).kernel_cmdline().split()
