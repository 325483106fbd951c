"""What a VM needs from its VMM, independent of which VMM runs it.

``LaunchSpec`` is a plain value computed from the resolved config and the VM's image (the
"plan"); each backend turns it into its own command line. Keeping it free of QEMU, crosvm or
cloud-hypervisor details is what lets the three backends share the lifecycle code, and lets
tests check the plan without starting anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path


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
    """The files of one running VM under its runtime directory."""

    runtime_dir: Path

    @property
    def control_socket(self) -> Path:  # QMP, cloud-hypervisor API, or crosvm control socket
        return self.runtime_dir / "vmm.sock"

    @property
    def channel_socket(self) -> Path:  # the virtio-serial mux, or hybrid vsock
        return self.runtime_dir / "channel.sock"

    @property
    def console_socket(self) -> Path:
        return self.runtime_dir / "console.sock"

    @property
    def console_log(self) -> Path:
        return self.runtime_dir / "console.log"

    @property
    def vmm_log(self) -> Path:
        return self.runtime_dir / "vmm.log"

    @property
    def pidfile(self) -> Path:
        return self.runtime_dir / "vmm.pid"

    @property
    def cid_file(self) -> Path:
        return self.runtime_dir / "cid"


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
    balloon: bool = True
    use_vsock: bool = False  # vhost-vsock when the host has it, else the virtio-serial mux
    labels: dict[str, str] = field(default_factory=dict)

    def kernel_cmdline(self) -> str:
        """Everything per-VM reaches the guest here; the image is the same for every VM."""
        params = [
            "console=ttyS0",
            "panic=-1",  # a guest kernel panic ends the VMM instead of hanging it
            "quiet",
            "loglevel=4",
            f"vmsilo.name={self.name}",
            f"systemd.hostname={self.name}",
            f"vmsilo.overlay={self.overlay.value}",
        ]
        if self.overlay is OverlayKind.TMPFS:
            params.append(f"vmsilo.overlay_size={self.overlay_size}")
        params += [f"vmsilo.ifname={nic.name},{nic.mac}" for nic in self.nics]
        params += self.kernel_params
        return " ".join(params)
