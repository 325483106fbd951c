"""QEMU backend: command line, launch, and control over QMP.

Machine type: always ``-M microvm`` (virtio-mmio devices, no firmware, no legacy buses: the
fastest boot and the smallest device model). Network interfaces and passed-through PCI devices
need fixed PCI slots (the derived ``00:16.0``…), so a VM with either gets ``pcie=on``, which
adds a PCIe host bridge to the microvm and keeps everything else on virtio-mmio. Every device
the system uses exists in a microvm form (virtio-blk, -serial, -balloon, -net, vhost-vsock,
vhost-user-fs, vfio-pci on the PCIe bridge), so there is no reason to fall back to q35.

QEMU runs jailed (``host/sandbox.py``): as the VM's own uid and gid (``host/ids.py``), in its
own mount, PID, IPC, UTS, cgroup and network namespaces, seeing only the host's programs and the
VM's kernel and initramfs, with no capabilities and ``no_new_privs``; inside, ``-sandbox on``
(QEMU's seccomp filter) denies privilege elevation, spawning and resource control. It opens no
path of vmsilod's: every socket (QMP, balloon QMP, console, channel), log, disk, TAP and
virtiofsd connection is a descriptor vmsilod opened and passed (``fd=`` chardevs, ``-add-fd``
fdsets for the drives and the console log), so its uid needs to own nothing on the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from qemu.qmp import QMPClient

from vmsilo.host import proc
from vmsilo.host.openas import open_for_vmm
from vmsilo.host.safefs import Dir
from vmsilo.host.sandbox import INSTALL_BWRAP, Limits, Sandbox, read_child_pid
from vmsilo.hypervisor import qemuopt
from vmsilo.hypervisor.accel import Accelerator, choose_accelerator
from vmsilo.hypervisor.base import Backend, VmmLaunchError, VmmProcess
from vmsilo.hypervisor.spec import DiskSpec, LaunchSpec
from vmsilo.hypervisor.tapfd import NicFds

log = logging.getLogger(__name__)

QEMU = "qemu-system-x86_64"
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
CONTROL_TIMEOUT = 30.0
VHOST_VSOCK_DEVICE = "/dev/vhost-vsock"
# Open files QEMU may hold: disks, TAP and vhost queues, chardevs, eventfds of every virtqueue.
NOFILE_LIMIT = 8192
# Pinned memory: none is needed without device passthrough (vhost-user maps shared memfd RAM,
# which needs no lock); a passed-through PCI device pins all guest RAM, plus room for the rest.
MEMLOCK_BASE = 64 * 1024
MEMLOCK_PCI_EXTRA = 256 * 1024 * 1024
# Where the jail shows the kernel and initramfs vmsilod opened (QEMU reads them with fopen(),
# so they must be paths: bound from descriptors, never looked up by path as root).
JAIL_KERNEL = Path("/vmsilo/vmlinuz")
JAIL_INITRD = Path("/vmsilo/initrd.img")


@dataclass
class LaunchFds:
    """The descriptors vmsilod opened for one QEMU, as QEMU (its child) numbers them."""

    qmp: int  # listening sockets QEMU serves
    balloon: int
    console: int
    channel: int | None  # None with vhost-vsock
    console_log: int  # where the console's output is logged (write end)
    drives: dict[str, tuple[int, ...]] = field(default_factory=dict)  # drive id -> fdset
    taps: dict[str, int] = field(default_factory=dict)  # NIC name -> TAP
    vhost_net: dict[str, int] = field(default_factory=dict)
    shares: tuple[int, ...] = ()  # connected virtiofsd sockets, in spec.shares order
    vsock: int | None = None
    kernel: int | None = None  # shown in the jail at JAIL_KERNEL (None: spec.kernel's path)
    initrd: int | None = None  # shown at JAIL_INITRD

    def all(self) -> list[int]:
        fds = [self.qmp, self.balloon, self.console, self.console_log]
        fds += [fd for fd in (self.channel, self.vsock, self.kernel, self.initrd)
                if fd is not None]
        for group in self.drives.values():
            fds += group
        return [*fds, *self.taps.values(), *self.vhost_net.values(), *self.shares]


class _Fdsets:
    """``-add-fd`` options: each set of descriptors gets the next set id."""

    def __init__(self) -> None:
        self.args: list[str] = []
        self._next = 1

    def add(self, fds: tuple[int, ...]) -> str:
        set_id = self._next
        self._next += 1
        for fd in fds:
            self.args += ["-add-fd", f"fd={fd},set={set_id}"]
        return f"/dev/fdset/{set_id}"


def _drive_args(disk: DiskSpec, drive_id: str, path: str) -> list[str]:
    drive = [f"file={path}", "if=none", f"id={drive_id}", f"format={disk.format}"]
    if disk.readonly:
        drive.append("readonly=on")
    if disk.discard:
        drive += ["discard=unmap", "detect-zeroes=unmap"]
    if disk.direct:
        drive.append("cache.direct=on")
    device = ["virtio-blk-device", f"drive={drive_id}", f"serial={qemuopt.value(disk.serial)}"]
    if disk.block_size:
        size = disk.block_size
        device += [f"logical_block_size={size}", f"physical_block_size={size}"]
    return ["-drive", ",".join(drive), "-device", ",".join(device)]


def drive_ids(spec: LaunchSpec) -> list[tuple[str, DiskSpec]]:
    drives = [("root", spec.root)]
    if spec.overlay_disk is not None:
        drives.append(("overlay", spec.overlay_disk))
    drives += [(f"disk{index}", disk) for index, disk in enumerate(spec.extra_disks)]
    return drives


def _chardev_server(chardev: str, fd: int, extra: str = "") -> list[str]:
    return ["-chardev", f"socket,id={chardev},fd={fd},server=on,wait=off{extra}"]


def build_command(spec: LaunchSpec, accel: Accelerator, fds: LaunchFds,
                  qemu: str = QEMU) -> list[str]:
    """QEMU's argv; every host resource is one of ``fds`` (see module docstring)."""
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
    fdsets = _Fdsets()
    argv = [
        qemu,
        # Named threads ("CPU 0/TCG"…): core scheduling finds the vCPUs by name.
        "-name", f"{spec.name},debug-threads=on",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-machine", machine,
        *accel.qemu_args,
        "-m", f"{spec.memory_mb}M",
        *memory,
        "-smp", str(spec.cpus),
        "-kernel", str(JAIL_KERNEL if fds.kernel is not None else spec.kernel),
        "-append", spec.kernel_cmdline(accel.kernel_params),
    ]  # fmt: skip
    if spec.initrd is not None:
        argv += ["-initrd", str(JAIL_INITRD if fds.initrd is not None else spec.initrd)]
    for drive_id, disk in drive_ids(spec):
        argv += _drive_args(disk, drive_id, fdsets.add(fds.drives[drive_id]))
    # The serial console: a socket vm-shell can attach to, and a log of everything it printed,
    # whether or not anyone was attached.
    log_path = fdsets.add((fds.console_log,))
    argv += [*_chardev_server("console", fds.console, f",logfile={log_path},logappend=on"),
             "-serial", "chardev:console"]
    if spec.use_vsock:
        assert fds.vsock is not None
        argv += ["-device", f"vhost-vsock-device,guest-cid={spec.cid},vhostfd={fds.vsock}"]
    else:
        assert fds.channel is not None
        argv += [
            *_chardev_server("channel", fds.channel),
            "-device", "virtio-serial-device,max_ports=2",
            "-device", "virtserialport,chardev=channel,name=vmsilo.mux",
        ]  # fmt: skip
    if spec.balloon:
        argv += ["-device", "virtio-balloon-device,id=balloon0,deflate-on-oom=on"]
    for nic in spec.nics:
        netdev = f"tap,id=net-{nic.name},fd={fds.taps[nic.name]}"
        if nic.name in fds.vhost_net:
            netdev += f",vhost=on,vhostfd={fds.vhost_net[nic.name]}"
        argv += [
            "-netdev", netdev,
            "-device", f"virtio-net-pci,netdev=net-{nic.name},mac={nic.mac},addr={nic.pci_slot:#x}",
        ]  # fmt: skip
    for index, share in enumerate(spec.shares):
        argv += [
            "-chardev", f"socket,id=fs{index},fd={fds.shares[index]}",
            "-device", f"vhost-user-fs-device,chardev=fs{index},tag={share.tag}",
        ]  # fmt: skip
    for device in spec.pci_devices:
        argv += ["-device", f"vfio-pci,sysfsdev={device}"]
    argv += [
        *_chardev_server("qmp", fds.qmp), "-mon", "chardev=qmp,mode=control",
        # QMP serves one client per socket: vmsilo-balloond gets its own.
        *_chardev_server("balloonqmp", fds.balloon), "-mon", "chardev=balloonqmp,mode=control",
        "-sandbox", SANDBOX,
        "-msg", "timestamp=on",
    ]  # fmt: skip
    argv += fdsets.args
    argv += spec.extra_args
    return argv


@dataclass(frozen=True)
class VmmJail:
    """Whom the VMM runs as. ``uid``/``gid`` None: vmsilod's own (user mode, no root).
    ``desktop``: the desktop user (uid, gid), as whom paths the config names are opened
    where root alone does not control them (``host/openas.py``)."""

    uid: int | None
    gid: int | None
    desktop: tuple[int, int] | None = None

    def sandbox(self, spec: LaunchSpec, accel: Accelerator,
                fds: LaunchFds | None = None) -> Sandbox:
        ro: list[Path] = []
        shown: list[tuple[int, Path]] = []
        if fds is not None and fds.kernel is not None:
            shown.append((fds.kernel, JAIL_KERNEL))
        else:
            ro.append(spec.kernel)
        if fds is not None and fds.initrd is not None:
            shown.append((fds.initrd, JAIL_INITRD))
        elif spec.initrd is not None:
            ro.append(spec.initrd)
        devices = [Path("/dev/kvm")] if accel.name == "kvm" else []
        memlock = MEMLOCK_BASE
        if spec.pci_devices:
            devices.append(Path("/dev/vfio"))
            ro.append(Path("/sys"))
            memlock += spec.memory_mb * 1024 * 1024 + MEMLOCK_PCI_EXTRA
        return Sandbox(uid=self.uid, gid=self.gid, ro_binds=tuple(ro), fd_binds=tuple(shown),
                       dev_binds=tuple(devices), limits=Limits(nofile=NOFILE_LIMIT,
                                                               memlock=memlock))


def _open_drive(disk: DiskSpec, ours: bool, desktop: tuple[int, int] | None,
                what: str) -> tuple[int, ...]:
    """The drive's fdset: read-only, plus read-write unless the drive is read-only (QEMU
    picks the one whose access mode it asks for). Our own file (the overlay, in root's state
    directory) is opened without following a link; a path from the config as
    ``host/openas.py`` says (by root only where root alone controls the path)."""
    extra = os.O_DIRECT if disk.direct else 0
    modes = [os.O_RDONLY] + ([] if disk.readonly else [os.O_RDWR])
    fds: list[int] = []
    try:
        for mode in modes:
            if ours:
                fds.append(os.open(disk.path, mode | extra | os.O_NOFOLLOW | os.O_CLOEXEC))
            else:
                fds.append(open_for_vmm(disk.path, mode | extra, desktop, what))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return tuple(fds)


def _kill_uid(uid: int | None) -> None:
    """SIGKILL every process running as ``uid`` — a VM's own VMM uid (``host/ids.py``), which
    nothing but that VM's jail uses; None (user mode) kills nothing."""
    if uid is None:
        return
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            owner = entry.stat().st_uid
        except OSError:
            continue
        if owner == uid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), 9)


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

    def _open_fds(self, spec: LaunchSpec, runtime: Dir, console_log: int,
                  desktop: tuple[int, int] | None, stack: contextlib.ExitStack) -> LaunchFds:
        layout = spec.layout

        def listen(path: Path) -> int:
            sock = runtime.listen_unix(path.name)
            stack.callback(sock.close)
            return sock.fileno()

        def keep(fd: int) -> int:
            stack.callback(os.close, fd)
            return fd

        fds = LaunchFds(
            qmp=listen(layout.control_socket), balloon=listen(layout.balloon_socket),
            console=listen(layout.console_socket),
            channel=None if spec.use_vsock else listen(layout.channel_socket),
            console_log=console_log)
        for drive_id, disk in drive_ids(spec):
            what = f"VM {spec.name}: disk {drive_id}"
            try:
                fds.drives[drive_id] = tuple(keep(fd) for fd in _open_drive(
                    disk, drive_id == "overlay", desktop, what))
            except OSError as exc:
                raise VmmLaunchError(spec.name, f"cannot open its disk {disk.path}: "
                                     f"{exc.strerror}", [], layout.vmm_log) from exc
        fds.kernel = keep(open_for_vmm(spec.kernel, os.O_RDONLY, desktop,
                                       f"VM {spec.name}: kernel"))
        if spec.initrd is not None:
            fds.initrd = keep(open_for_vmm(spec.initrd, os.O_RDONLY, desktop,
                                           f"VM {spec.name}: initramfs"))
        if spec.use_vsock:
            try:
                fds.vsock = keep(os.open(VHOST_VSOCK_DEVICE, os.O_RDWR | os.O_CLOEXEC))
            except OSError as exc:
                raise VmmLaunchError(spec.name, f"cannot open {VHOST_VSOCK_DEVICE}: "
                                     f"{exc.strerror}", [], layout.vmm_log) from exc
        nics = NicFds()
        stack.callback(nics.close)
        for nic in spec.nics:
            try:
                nics.open(nic.name, nic.tap)
            except OSError as exc:
                raise VmmLaunchError(spec.name, f"cannot attach to TAP {nic.tap}: "
                                     f"{exc.strerror}", [], layout.vmm_log) from exc
        fds.taps, fds.vhost_net = dict(nics.tap), dict(nics.vhost)
        shares = []
        for share in spec.shares:
            try:
                with Dir.secure(share.socket.parent, create=False) as directory:
                    sock = directory.connect_unix(share.socket.name)
            except OSError as exc:
                raise VmmLaunchError(spec.name, f"cannot reach virtiofsd of share "
                                     f"{share.tag!r} ({share.socket}): {exc}", [],
                                     layout.vmm_log) from exc
            stack.callback(sock.close)
            shares.append(sock.fileno())
        fds.shares = tuple(shares)
        return fds

    async def launch(self, spec: LaunchSpec, *, runtime: Dir, console_log: int,
                     vmm_log: int, jail: VmmJail,
                     on_spawn: Callable[[VmmProcess], None] | None = None) -> VmmProcess:
        """Start QEMU in its jail; return once QMP answers. ``on_spawn`` is called as soon as
        the VMM's pid is known (vmsilod records its identity then, so a vmsilod that dies
        during the start still finds it). A launch that fails or is cancelled ends what it
        started before the exception leaves."""
        for tool, package in ((self.qemu, "qemu-system-x86"), ("bwrap", "bubblewrap")):
            if shutil.which(tool) is None:
                raise VmmLaunchError(
                    spec.name, f"binary {tool} is missing (install the Debian package "
                    f"{package}){'; ' + INSTALL_BWRAP if tool == 'bwrap' else ''}",
                    [tool], spec.layout.vmm_log)
        qemu_exe = os.path.realpath(shutil.which(self.qemu) or self.qemu)
        with contextlib.ExitStack() as stack:
            fds = self._open_fds(spec, runtime, console_log, jail.desktop, stack)
            command = build_command(spec, self.accel, fds, self.qemu)
            info_read, info_write = os.pipe2(os.O_CLOEXEC)
            try:
                argv = jail.sandbox(spec, self.accel, fds).argv(command, info_fd=info_write)
                monitor = proc.spawn(argv, stdout=vmm_log, stderr=vmm_log,
                                     pass_fds=[*fds.all(), info_write])
            except BaseException:
                os.close(info_read)
                raise
            finally:
                os.close(info_write)
            try:
                pid = await asyncio.to_thread(read_child_pid, info_read)
                vmm = VmmProcess(pid, monitor)
                vmm.exe = qemu_exe
            except BaseException as exc:
                # The jail may be stuck before its command, or we were cancelled: end it (and
                # anything already running as the VM's uid), never wait on it.
                monitor.kill()
                _kill_uid(jail.uid)
                await asyncio.shield(asyncio.to_thread(monitor.wait))
                if isinstance(exc, OSError):
                    raise VmmLaunchError(spec.name, f"did not start in its jail ({exc}; exit "
                                         f"status {monitor.returncode})", argv,
                                         spec.layout.vmm_log) from exc
                raise
        try:
            if on_spawn is not None:
                on_spawn(vmm)
            return await self._until_control_answers(spec, vmm, argv)
        except BaseException:
            vmm.kill()
            await asyncio.shield(vmm.wait(10))
            vmm.close()
            raise

    async def _until_control_answers(self, spec: LaunchSpec, vmm: VmmProcess,
                                     argv: list[str]) -> VmmProcess:
        layout = spec.layout
        deadline = asyncio.get_running_loop().time() + CONTROL_TIMEOUT
        while True:
            if vmm.exited():
                await vmm.wait(1)
                raise VmmLaunchError(spec.name, f"exited at start with status {vmm.returncode}",
                                     argv, layout.vmm_log)
            try:
                async with qmp_session(layout.control_socket, timeout=2):
                    return vmm
            # The socket was bound by us, so connecting succeeds even before QEMU serves it
            # (or after it died): any failure of the session means "not yet".
            except Exception as exc:
                log.debug("VM %s: QMP not answering yet: %s", spec.name, exc)
            if asyncio.get_running_loop().time() > deadline:
                vmm.kill()
                await vmm.wait(5)
                raise VmmLaunchError(spec.name, "control socket never answered", argv,
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

