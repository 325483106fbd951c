"""From a resolved VM and its image to a ``LaunchSpec``: the pure part of starting a VM.

It decides which kernel, initramfs and root disk boot (the image's, or the VM's ``kernel``,
``initramfs`` and ``rootDisk`` overrides, as upstream), what the overlay is, which disks and
NICs the VM gets, and the kernel command line. Nothing here touches the host.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vmsilo.config import ResolvedVm, parse_size
from vmsilo.config.model import Disk
from vmsilo.host.paths import Paths
from vmsilo.hypervisor.spec import (
    DiskSpec,
    FsShare,
    LaunchSpec,
    NicSpec,
    OverlayKind,
    RuntimeLayout,
)
from vmsilo.network.guest import check_cmdline_length

SERIAL_MAX = 20
# Room for the words the VMM adds to the command line (e.g. virtio-mmio device addresses).
VMM_PARAMS_ALLOWANCE = ("x" * 400,)  # virtio-blk serials are at most 20 bytes


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() in ("true", "on", "1"))


def _qcow2(path: Path) -> bool:
    try:
        with open(path, "rb") as disk:
            return disk.read(4) == b"QFI\xfb"
    except OSError:
        return False


def disk_spec(disk: Disk, default_serial: str, readonly_default: bool = False) -> DiskSpec:
    """Upstream's disk tables carry crosvm ``--block`` keys: map those we understand."""
    extra: dict[str, Any] = disk.model_extra or {}
    path = Path(disk.path)
    readonly = _truthy(extra["ro"]) if "ro" in extra else readonly_default
    serial = str(extra.get("id", default_serial))[:SERIAL_MAX]
    fmt = str(extra.get("format", "qcow2" if _qcow2(path) else "raw"))
    block_size = extra.get("block-size")
    return DiskSpec(
        path=path,
        serial=serial,
        readonly=readonly,
        format=fmt,
        discard=_truthy(extra.get("sparse", False)),
        direct=_truthy(extra.get("direct", False)),
        block_size=int(block_size) if block_size is not None else None,
    )


def pci_sysfs_path(path: str) -> str:
    if path.startswith("/"):
        return path
    bdf = path if path.count(":") == 2 else f"0000:{path}"
    return f"/sys/bus/pci/devices/{bdf}"


def launch_spec(
    rvm: ResolvedVm,
    image_dir: Path | None,
    paths: Paths,
    *,
    use_vsock: bool = False,
    guest_network: tuple[str, ...] = (),
    shares: tuple[FsShare, ...] = (),
    guest_shares: tuple[str, ...] = (),
) -> LaunchSpec:
    features: tuple[str, ...] = (
        ("vmsilo.dbus=1",) if rvm.vm.dbus.tray or rvm.vm.dbus.notifications else ())
    if rvm.vm.gpu.wayland:
        features += ("vmsilo.wayland=1",)
    vm = rvm.vm
    if image_dir is None and (vm.kernel is None or vm.root_disk is None):
        raise ValueError(f"VM {rvm.name}: no image and no kernel/rootDisk override")
    kernel = Path(vm.kernel) if vm.kernel else image_dir / "vmlinuz"  # type: ignore[operator]
    if vm.initramfs:
        initrd: Path | None = Path(vm.initramfs)
    elif image_dir is not None:
        initrd = image_dir / "initrd.img"
    else:
        initrd = None
    if vm.root_disk is not None:
        root = disk_spec(vm.root_disk, "vmsilo-root", readonly_default=True)
        root = DiskSpec(root.path, "vmsilo-root", root.readonly, root.format, root.discard,
                        root.direct, root.block_size)
    else:
        assert image_dir is not None
        # erofs is read-only whatever the flag says; rootDiskReadonly=false only makes the
        # virtual disk writable, as upstream's crosvm --block ro=false does.
        root = DiskSpec(image_dir / "rootfs.erofs", "vmsilo-root", vm.root_disk_readonly)
    overlay_size = parse_size(vm.root_overlay.size)
    overlay = OverlayKind.TMPFS if vm.root_overlay.type == "tmpfs" else OverlayKind.DISK
    overlay_disk = None
    if overlay is OverlayKind.DISK:
        overlay_disk = DiskSpec(paths.overlay_disk(rvm.name), "vmsilo-overlay", False,
                                discard=True)
    extra_disks = tuple(
        disk_spec(disk, f"vmsilo-disk{index}") for index, disk in enumerate(vm.additional_disks)
    )
    nics = tuple(
        NicSpec(name=iface.name, tap=iface.tap_name, mac=iface.mac, pci_slot=iface.slot)
        for iface in rvm.interfaces.values()
    )
    spec = LaunchSpec(
        name=rvm.name,
        cid=rvm.cid,
        memory_mb=vm.memory,
        cpus=vm.cpus,
        kernel=kernel,
        initrd=initrd,
        root=root,
        overlay=overlay,
        overlay_disk=overlay_disk,
        overlay_size=overlay_size,
        layout=RuntimeLayout(paths.vm_runtime_dir(rvm.name), paths.vm_log_dir(rvm.name)),
        extra_disks=extra_disks,
        nics=nics,
        kernel_params=tuple(vm.kernel_params),
        pci_devices=tuple(pci_sysfs_path(dev.path) for dev in vm.pci_devices),
        extra_args=tuple(vm.qemu.extra_args),
        guest_network=guest_network,
        shares=shares,
        guest_shares=guest_shares,
        guest_features=features,
        use_vsock=use_vsock,
    )
    check_cmdline_length(rvm.name, spec.kernel_cmdline(VMM_PARAMS_ALLOWANCE))
    return spec
