"""QEMU backend: command line, launch, and control over QMP.

Machine type: always ``-M microvm`` (virtio-mmio devices, no firmware, no legacy buses: the
fastest boot and the smallest device model). Network interfaces and passed-through PCI devices
need fixed PCI slots (the derived ``00:16.0``…), so a VM with either gets ``pcie=on``, which
adds a PCIe host bridge to the microvm and keeps everything else on virtio-mmio. Every device
the system uses exists in a microvm form (virtio-blk, -serial, -balloon, -net, vhost-vsock,
vhost-user-fs, vfio-pci on the PCIe bridge), so there is no reason to fall back to q35.

QEMU runs with ``-sandbox on`` denying privilege elevation, spawning and resource control; when
vmsilod runs as root it starts QEMU already as the configured user (privileges dropped before
exec, not by QEMU's ``-runas``, which its own sandbox would forbid).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

from qemu.qmp import QMPClient

from vmsilo.host import proc
from vmsilo.hypervisor.accel import Accelerator, choose_accelerator
from vmsilo.hypervisor.base import Backend, VmmLaunchError, VmmProcess
from vmsilo.hypervisor.spec import DiskSpec, LaunchSpec
from vmsilo.hypervisor.tapfd import VHOST_NET_DEVICE, NicFds

QEMU = "qemu-system-x86_64"
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
CONTROL_TIMEOUT = 30.0


def _drive_args(disk: DiskSpec, drive_id: str) -> list[str]:
    drive = [f"file={disk.path}", "if=none", f"id={drive_id}", f"format={disk.format}"]
    if disk.readonly:
        drive.append("readonly=on")
    if disk.discard:
        drive += ["discard=unmap", "detect-zeroes=unmap"]
    if disk.direct:
        drive.append("cache.direct=on")
    device = ["virtio-blk-device", f"drive={drive_id}", f"serial={disk.serial}"]
    if disk.block_size:
        size = disk.block_size
        device += [f"logical_block_size={size}", f"physical_block_size={size}"]
    return ["-drive", ",".join(drive), "-device", ",".join(device)]


def process_marker(vm: str) -> str:
    return f"{vm},process=vmsilo-{vm}"


def build_command(
    spec: LaunchSpec, accel: Accelerator, qemu: str = QEMU, fds: NicFds | None = None
) -> list[str]:
    """QEMU's argv. With ``fds`` the NICs use descriptors opened by vmsilod (passed to the
    child), else QEMU opens the TAPs by name itself."""
    layout = spec.layout
    needs_pci = bool(spec.nics or spec.pci_devices)
    machine = f"microvm,pcie={'on' if needs_pci else 'off'},rtc=on,acpi=on"
    memory: list[str] = []
    if spec.shares:
        # vhost-user (virtiofsd) reads and writes guest memory: it must be shareable.
        machine += ",memory-backend=ram"
        memory = ["-object", f"memory-backend-memfd,id=ram,size={spec.memory_mb}M,share=on",
                  # microvm's virtio-mmio defaults to the legacy interface, which vhost-user
                  # backends refuse.
                  "-global", "virtio-mmio.force-legacy=false"]
    argv = [
        qemu,
        "-name", process_marker(spec.name),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-machine", machine,
        *accel.qemu_args,
        "-m", f"{spec.memory_mb}M",
        *memory,
        "-smp", str(spec.cpus),
        "-kernel", str(spec.kernel),
        "-append", spec.kernel_cmdline(accel.kernel_params),
    ]  # fmt: skip
    if spec.initrd is not None:
        argv += ["-initrd", str(spec.initrd)]
    argv += _drive_args(spec.root, "root")
    if spec.overlay_disk is not None:
        argv += _drive_args(spec.overlay_disk, "overlay")
    for index, disk in enumerate(spec.extra_disks):
        argv += _drive_args(disk, f"disk{index}")
    # The serial console: a socket vm-shell can attach to, and a log of everything it printed,
    # whether or not anyone was attached.
    argv += [
        "-chardev",
        f"socket,id=console,path={layout.console_socket},server=on,wait=off,"
        f"logfile={layout.console_log},logappend=on",
        "-serial", "chardev:console",
    ]  # fmt: skip
    if spec.use_vsock:
        argv += ["-device", f"vhost-vsock-device,guest-cid={spec.cid}"]
    else:
        argv += [
            "-chardev", f"socket,id=channel,path={layout.channel_socket},server=on,wait=off",
            "-device", "virtio-serial-device,max_ports=2",
            "-device", "virtserialport,chardev=channel,name=vmsilo.mux",
        ]  # fmt: skip
    if spec.balloon:
        argv += ["-device", "virtio-balloon-device,id=balloon0,deflate-on-oom=on"]
    for nic in spec.nics:
        if fds is not None and nic.name in fds.tap:
            netdev = f"tap,id=net-{nic.name},fd={fds.tap[nic.name]}"
            if nic.name in fds.vhost:
                netdev += f",vhost=on,vhostfd={fds.vhost[nic.name]}"
        else:
            vhost = ",vhost=on" if os.access(VHOST_NET_DEVICE, os.R_OK | os.W_OK) else ""
            netdev = f"tap,id=net-{nic.name},ifname={nic.tap},script=no,downscript=no{vhost}"
        argv += [
            "-netdev", netdev,
            "-device", f"virtio-net-pci,netdev=net-{nic.name},mac={nic.mac},addr={nic.pci_slot:#x}",
        ]  # fmt: skip
    for index, share in enumerate(spec.shares):
        argv += [
            "-chardev", f"socket,id=fs{index},path={share.socket}",
            "-device", f"vhost-user-fs-device,chardev=fs{index},tag={share.tag}",
        ]  # fmt: skip
    for device in spec.pci_devices:
        argv += ["-device", f"vfio-pci,sysfsdev={device}"]
    argv += [
        "-qmp", f"unix:{layout.control_socket},server=on,wait=off",
        # QMP serves one client per socket: vmsilo-balloond gets its own.
        "-qmp", f"unix:{layout.balloon_socket},server=on,wait=off",
        "-pidfile", str(layout.pidfile),
        "-sandbox", SANDBOX,
        "-msg", "timestamp=on",
    ]  # fmt: skip
    argv += spec.extra_args
    return argv


@contextlib.asynccontextmanager
async def qmp_session(socket: Path, timeout: float = 10.0) -> AsyncIterator[QMPClient]:
    client = QMPClient()
    await asyncio.wait_for(client.connect(str(socket)), timeout)
    try:
        yield client
    finally:
        await client.disconnect()


class QemuBackend(Backend):
    name = "qemu"

    def __init__(self, accel: Accelerator | None = None, qemu: str = QEMU) -> None:
        self._accel = accel
        self.qemu = qemu

    @property
    def accel(self) -> Accelerator:
        if self._accel is None:
            self._accel = choose_accelerator()
        return self._accel

    def command(self, spec: LaunchSpec) -> list[str]:
        return build_command(spec, self.accel, self.qemu)

    def process_marker(self, vm: str) -> str:
        return process_marker(vm)

    async def launch(
        self, spec: LaunchSpec, *, uid: int | None = None, gid: int | None = None
    ) -> VmmProcess:
        if shutil.which(self.qemu) is None:
            raise VmmLaunchError(
                spec.name, f"binary {self.qemu} is missing (install the Debian package "
                "qemu-system-x86)", [self.qemu], spec.layout.vmm_log)
        fds = NicFds()
        try:
            if os.geteuid() == 0:  # else QEMU (as us) opens its TAPs, which user mode lacks
                for nic in spec.nics:
                    try:
                        fds.open(nic.name, nic.tap)
                    except OSError as exc:
                        raise VmmLaunchError(
                            spec.name, f"cannot attach to TAP {nic.tap}: {exc.strerror}",
                            [], spec.layout.vmm_log) from exc
            command = build_command(spec, self.accel, self.qemu, fds)
            layout = spec.layout
            for stale in (layout.control_socket, layout.channel_socket,
                          layout.console_socket):
                stale.unlink(missing_ok=True)
            with open(layout.vmm_log, "ab") as log:
                popen = proc.spawn(command, stdout=log, stderr=log, user=uid, group=gid,
                                   extra_groups=[] if uid is not None else None,
                                   pass_fds=fds.all())
        finally:
            fds.close()
        vmm = VmmProcess(popen.pid, popen)
        deadline = asyncio.get_running_loop().time() + CONTROL_TIMEOUT
        while True:
            if vmm.exited():
                await vmm.wait(1)
                raise VmmLaunchError(spec.name, f"exited at start with status {vmm.returncode}",
                                     command, layout.vmm_log)
            if layout.control_socket.exists():
                try:
                    async with qmp_session(layout.control_socket, timeout=5):
                        return vmm
                except (OSError, TimeoutError):
                    pass
            if asyncio.get_running_loop().time() > deadline:
                vmm.kill()
                await vmm.wait(5)
                raise VmmLaunchError(spec.name, "control socket never answered", command,
                                     layout.vmm_log)
            await asyncio.sleep(0.05)

    async def request_shutdown(self, spec: LaunchSpec) -> None:
        async with qmp_session(spec.layout.control_socket) as qmp:
            await qmp.execute("system_powerdown")

    async def quit(self, spec: LaunchSpec) -> None:
        async with qmp_session(spec.layout.control_socket) as qmp:
            with contextlib.suppress(Exception):  # the connection drops as QEMU exits
                await qmp.execute("quit")

    async def status(self, spec: LaunchSpec) -> str:
        async with qmp_session(spec.layout.control_socket) as qmp:
            reply = await qmp.execute("query-status")
        assert isinstance(reply, dict)
        return str(reply.get("status", "unknown"))
