"""What a VM needs from its VMM, independent of which VMM runs it.

``LaunchSpec`` is a plain value computed from the resolved config and the VM's image (the
"plan"); each backend turns it into its own command line. Keeping it free of QEMU, crosvm or
cloud-hypervisor details is what lets the three backends share the lifecycle code, and lets
tests check the plan without starting anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from vmsilo.protocol import cmdline


class OverlayKind(Enum):
    DISK = "disk"  # sparse raw file, formatted ext4 by the guest's init at first boot
    TMPFS = "tmpfs"


@dataclass(frozen=True)
class DiskSpec:
    path: Path
    serial: str  # how the guest finds it (/sys/block/*/serial); at most 20 characters
    readonly: bool
    format: str = "raw"
    discard: bool = False
    direct: bool = False
    block_size: int | None = None


@dataclass(frozen=True)
class NicSpec:
    name: str  # guest interface name
    tap: str  # host TAP device
    mac: str
    pci_slot: int


@dataclass(frozen=True)
class RuntimeLayout:
    """The files of one running VM: sockets under its runtime directory, logs in its log
    directory (which outlives a stop or a failed start)."""

    runtime_dir: Path
    log_dir: Path

    @property
    def control_socket(self) -> Path:  # QMP, cloud-hypervisor API, or crosvm control socket
        return self.runtime_dir / "vmm.sock"

    @property
    def balloon_socket(self) -> Path:  # a second QMP socket, for vmsilo-balloond alone
        return self.runtime_dir / "balloon.sock"

    @property
    def channel_socket(self) -> Path:  # the virtio-serial mux, or hybrid vsock
        return self.runtime_dir / "channel.sock"

    @property
    def console_socket(self) -> Path:
        return self.runtime_dir / "console.sock"

    @property
    def console_log(self) -> Path:
        return self.log_dir / "console.log"

    @property
    def vmm_log(self) -> Path:
        return self.log_dir / "vmm.log"

    @property
    def spec_file(self) -> Path:  # the LaunchSpec this VM was started with
        return self.runtime_dir / "launch.json"

    @property
    def pidfile(self) -> Path:
        return self.runtime_dir / "vmm.pid"

    @property
    def cid_file(self) -> Path:
        return self.runtime_dir / "cid"


@dataclass(frozen=True)
class FsShare:
    tag: str
    socket: Path  # virtiofsd's vhost-user socket


@dataclass(frozen=True)
class LaunchSpec:
    name: str
    cid: int
    memory_mb: int
    cpus: int
    kernel: Path
    initrd: Path | None
    root: DiskSpec
    overlay: OverlayKind
    overlay_disk: DiskSpec | None
    overlay_size: int  # bytes; the tmpfs size limit or the sparse file's size
    layout: RuntimeLayout
    extra_disks: tuple[DiskSpec, ...] = ()
    nics: tuple[NicSpec, ...] = ()
    kernel_params: tuple[str, ...] = ()
    pci_devices: tuple[str, ...] = ()  # sysfs paths of vfio-bound devices
    extra_args: tuple[str, ...] = ()
    # The guest's network as kernel words (protocol.netparams); without them, only the NICs'
    # names reach the guest.
    guest_network: tuple[str, ...] = ()
    # virtiofs shares: their tags and vhost-user sockets, and the guest's words for them
    shares: tuple[FsShare, ...] = ()
    guest_shares: tuple[str, ...] = ()
    guest_features: tuple[str, ...] = ()  # e.g. "vmsilo.dbus=1": the tray/notification proxy
    balloon: bool = True
    use_vsock: bool = False  # vhost-vsock when the host has it, else the virtio-serial mux
    labels: dict[str, str] = field(default_factory=dict)

    def kernel_cmdline(self, vmm_params: Sequence[str] = ()) -> str:
        """Everything per-VM reaches the guest here; the image is the same for every VM.
        ``vmm_params`` are what the VMM needs; the VM's own ``kernelParams`` come last, so
        that they win."""
        params = [
            "console=ttyS0",
            "panic=-1",  # a guest kernel panic ends the VMM instead of hanging it...
            # ...by a triple fault: a microvm has no keyboard controller, and the kernel's
            # default reboot methods can spin there instead of resetting.
            "reboot=t",
            "quiet",
            "loglevel=4",
            f"vmsilo.name={self.name}",
            f"systemd.hostname={self.name}",
            f"vmsilo.overlay={self.overlay.value}",
        ]
        if self.overlay is OverlayKind.TMPFS:
            params.append(f"vmsilo.overlay_size={self.overlay_size}")
        params += self.guest_network or [f"vmsilo.ifname={nic.name},{nic.mac}" for nic in self.nics]
        params += self.guest_shares
        params += self.guest_features
        params += vmm_params
        params += self.kernel_params
        # Each must be exactly one word (a saved launch spec is re-checked too).
        return cmdline.join(params)


def spec_to_json(spec: LaunchSpec) -> dict[str, object]:
    """The spec as JSON data, saved next to a running VM so a restarted vmsilod can re-adopt
    it with exactly the settings it was started with (not whatever the config says now)."""

    def disk(d: DiskSpec | None) -> dict[str, object] | None:
        if d is None:
            return None
        return {"path": str(d.path), "serial": d.serial, "readonly": d.readonly,
                "format": d.format, "discard": d.discard, "direct": d.direct,
                "block_size": d.block_size}

    return {
        "name": spec.name, "cid": spec.cid, "memory_mb": spec.memory_mb, "cpus": spec.cpus,
        "kernel": str(spec.kernel), "initrd": str(spec.initrd) if spec.initrd else None,
        "root": disk(spec.root), "overlay": spec.overlay.value,
        "overlay_disk": disk(spec.overlay_disk), "overlay_size": spec.overlay_size,
        "runtime_dir": str(spec.layout.runtime_dir), "log_dir": str(spec.layout.log_dir),
        "extra_disks": [disk(d) for d in spec.extra_disks],
        "nics": [{"name": n.name, "tap": n.tap, "mac": n.mac, "pci_slot": n.pci_slot}
                 for n in spec.nics],
        "kernel_params": list(spec.kernel_params), "pci_devices": list(spec.pci_devices),
        "extra_args": list(spec.extra_args), "guest_network": list(spec.guest_network),
        "shares": [{"tag": s.tag, "socket": str(s.socket)} for s in spec.shares],
        "guest_shares": list(spec.guest_shares),
        "guest_features": list(spec.guest_features),
        "balloon": spec.balloon,
        "use_vsock": spec.use_vsock, "labels": dict(spec.labels),
    }  # fmt: skip


def spec_from_json(data: dict[str, Any]) -> LaunchSpec:
    """Inverse of ``spec_to_json``. The file is ours (root-owned runtime dir); a malformed one
    raises KeyError/TypeError/ValueError, which the caller treats as "cannot re-adopt"."""

    def disk(d: dict[str, Any] | None) -> DiskSpec | None:
        if d is None:
            return None
        return DiskSpec(Path(d["path"]), str(d["serial"]), bool(d["readonly"]), str(d["format"]),
                        bool(d["discard"]), bool(d["direct"]), d["block_size"])

    root = disk(data["root"])
    assert root is not None
    return LaunchSpec(
        name=str(data["name"]), cid=int(data["cid"]), memory_mb=int(data["memory_mb"]),
        cpus=int(data["cpus"]), kernel=Path(data["kernel"]),
        initrd=Path(data["initrd"]) if data["initrd"] else None, root=root,
        overlay=OverlayKind(data["overlay"]), overlay_disk=disk(data["overlay_disk"]),
        overlay_size=int(data["overlay_size"]),
        layout=RuntimeLayout(Path(data["runtime_dir"]), Path(data["log_dir"])),
        extra_disks=tuple(d for d in map(disk, data["extra_disks"]) if d is not None),
        nics=tuple(NicSpec(str(n["name"]), str(n["tap"]), str(n["mac"]), int(n["pci_slot"]))
                   for n in data["nics"]),
        kernel_params=tuple(data["kernel_params"]), pci_devices=tuple(data["pci_devices"]),
        extra_args=tuple(data["extra_args"]),
        guest_network=tuple(str(w) for w in data.get("guest_network", ())),
        shares=tuple(FsShare(str(s["tag"]), Path(s["socket"])) for s in data.get("shares", ())),
        guest_shares=tuple(str(w) for w in data.get("guest_shares", ())),
        guest_features=tuple(str(w) for w in data.get("guest_features", ())),
        balloon=bool(data["balloon"]),
        use_vsock=bool(data["use_vsock"]), labels=dict(data["labels"]),
    )  # fmt: skip
