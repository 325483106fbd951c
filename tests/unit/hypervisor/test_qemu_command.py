"""The QEMU command line built from a launch spec and the descriptors vmsilod opened for it:
the plan, checked without starting QEMU. QEMU is given descriptors only, never a path of
vmsilod's directories."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmsilo.hypervisor import accel as accel_module
from vmsilo.hypervisor import qemu as qemu_module
from vmsilo.hypervisor.accel import Accelerator
from vmsilo.hypervisor.qemu import LaunchFds, VmmJail, drive_ids
from vmsilo.hypervisor.spec import DiskSpec, LaunchSpec, NicSpec, OverlayKind, RuntimeLayout

TCG = Accelerator("tcg", "test")
KVM = Accelerator("kvm", "test")


def make_spec(**changes: object) -> LaunchSpec:
    base: dict[str, object] = dict(
        name="banking",
        cid=3,
        memory_mb=2048,
        cpus=4,
        kernel=Path("/img/vmlinuz"),
        initrd=Path("/img/initrd.img"),
        root=DiskSpec(Path("/img/rootfs.erofs"), "vmsilo-root", readonly=True),
        overlay=OverlayKind.DISK,
        overlay_disk=DiskSpec(Path("/state/overlay.raw"), "vmsilo-overlay", False, discard=True),
        overlay_size=10 << 30,
        layout=RuntimeLayout(Path("/run/vmsilo/banking"), Path("/var/log/vmsilo/banking")),
    )
    base.update(changes)
    return LaunchSpec(**base)  # type: ignore[arg-type]


def fds_for(spec: LaunchSpec) -> LaunchFds:
    """Descriptor numbers as vmsilod would pass them: 10, 11, … in a fixed order."""
    numbers = iter(range(10, 100))
    fds = LaunchFds(qmp=next(numbers), balloon=next(numbers), console=next(numbers),
                    channel=None if spec.use_vsock else next(numbers),
                    console_log=next(numbers), vsock=next(numbers) if spec.use_vsock else None)
    for drive_id, disk in drive_ids(spec):
        fds.drives[drive_id] = (next(numbers),) if disk.readonly else (next(numbers),
                                                                       next(numbers))
    fds.taps = {nic.name: next(numbers) for nic in spec.nics}
    fds.vhost_net = {nic.name: next(numbers) for nic in spec.nics[:1]}  # one with vhost
    fds.shares = tuple(next(numbers) for _ in spec.shares)
    return fds


def build_command(spec: LaunchSpec, accel: Accelerator) -> list[str]:
    return qemu_module.build_command(spec, accel, fds_for(spec))


def fdset_of(argv: list[str], path: str) -> list[int]:
    """The descriptors of ``/dev/fdset/N``."""
    set_id = path.removeprefix("/dev/fdset/")
    return [int(v.split(",")[0].removeprefix("fd=")) for v in option_values(argv, "-add-fd")
            if v.endswith(f",set={set_id}")]


def option_values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == flag]


def test_offline_vm_is_a_plain_microvm_with_the_mux_channel() -> None:
    argv = build_command(make_spec(), TCG)
    assert option_values(argv, "-machine") == ["microvm,pcie=off,rtc=on,acpi=on"]
    assert option_values(argv, "-accel") == ["tcg,thread=multi"]
    assert option_values(argv, "-m") == ["2048M"]
    assert option_values(argv, "-smp") == ["4"]
    devices = option_values(argv, "-device")
    assert "virtserialport,chardev=channel,name=vmsilo.mux" in devices
    assert not any(d.startswith("vhost-vsock") for d in devices)
    assert not any("-pci" in d for d in devices)
    assert "virtio-blk-device,drive=root,serial=vmsilo-root" in devices
    drives = option_values(argv, "-drive")
    assert "file=/dev/fdset/1,if=none,id=root,format=raw,readonly=on" in drives
    assert fdset_of(argv, "/dev/fdset/1") == list(fds_for(make_spec()).drives["root"])
    overlay = next(d for d in drives if "id=overlay" in d)
    assert "discard=unmap" in overlay and "readonly" not in overlay
    # A writable drive's set holds a read-only and a read-write descriptor.
    assert len(fdset_of(argv, overlay.split(",")[0].removeprefix("file="))) == 2


def test_qemu_is_given_no_path_of_vmsilods_directories() -> None:
    argv = build_command(make_spec(), TCG)
    joined = " ".join(argv)
    assert "/run/vmsilo" not in joined and "/var/log/vmsilo" not in joined
    assert "/state/overlay.raw" not in joined
    assert "-pidfile" not in argv and "-qmp" not in argv


def test_sandbox_denies_elevation_and_spawning() -> None:
    (sandbox,) = option_values(build_command(make_spec(), KVM), "-sandbox")
    assert sandbox.startswith("on,")
    for rule in ("elevateprivileges=deny", "spawn=deny", "obsolete=deny", "resourcecontrol=deny"):
        assert rule in sandbox
    assert "-runas" not in build_command(make_spec(), KVM)


def test_kvm_uses_the_host_cpu() -> None:
    argv = build_command(make_spec(), KVM)
    assert option_values(argv, "-accel") == ["kvm"]
    assert option_values(argv, "-cpu") == ["host"]


def test_network_interfaces_get_pcie_and_their_derived_slots() -> None:
    nics = (
        NicSpec("lan", "banking-22", "52:aa:bb:cc:dd:01", 0x16),
        NicSpec("wan", "banking-23", "52:aa:bb:cc:dd:02", 0x17),
    )
    argv = build_command(make_spec(nics=nics), TCG)
    assert option_values(argv, "-machine")[0].startswith("microvm,pcie=on")
    devices = option_values(argv, "-device")
    assert "virtio-net-pci,netdev=net-lan,mac=52:aa:bb:cc:dd:01,addr=0x16" in devices
    assert "virtio-net-pci,netdev=net-wan,mac=52:aa:bb:cc:dd:02,addr=0x17" in devices
    netdevs = option_values(argv, "-netdev")
    fds = fds_for(make_spec(nics=nics))
    assert netdevs == [f"tap,id=net-lan,fd={fds.taps['lan']},vhost=on,vhostfd="
                       f"{fds.vhost_net['lan']}", f"tap,id=net-wan,fd={fds.taps['wan']}"]
    cmdline = option_values(argv, "-append")[0]
    assert "vmsilo.ifname=lan,52:aa:bb:cc:dd:01" in cmdline.split()
    assert "vmsilo.ifname=wan,52:aa:bb:cc:dd:02" in cmdline.split()


def test_vsock_replaces_the_mux_when_available() -> None:
    spec = make_spec(use_vsock=True, cid=7)
    devices = option_values(build_command(spec, TCG), "-device")
    assert f"vhost-vsock-device,guest-cid=7,vhostfd={fds_for(spec).vsock}" in devices
    assert not any("vmsilo.mux" in d for d in devices)


def test_kernel_command_line_carries_per_vm_settings() -> None:
    spec = make_spec(
        overlay=OverlayKind.TMPFS,
        overlay_disk=None,
        overlay_size=1 << 30,
        kernel_params=("debug", "acpi=off"),
    )
    params = option_values(build_command(spec, TCG), "-append")[0].split()
    assert "vmsilo.name=banking" in params
    assert "systemd.hostname=banking" in params
    assert "vmsilo.overlay=tmpfs" in params
    assert "vmsilo.overlay_size=1073741824" in params
    assert params[-2:] == ["debug", "acpi=off"]  # user's kernelParams come last and win
    assert not any("id=overlay" in d for d in option_values(build_command(spec, TCG), "-drive"))


def test_vmm_parameters_come_before_the_vms_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel_module, "host_tsc_khz", lambda: 1234)
    spec = make_spec(kernel_params=("tsc_early_khz=999",))
    params = option_values(build_command(spec, TCG), "-append")[0].split()
    assert params[-2:] == ["tsc_early_khz=1234", "tsc_early_khz=999"]  # the VM's own wins
    assert "tsc_early_khz=1234" not in option_values(build_command(spec, KVM), "-append")[0]


def test_console_is_logged_and_attachable() -> None:
    argv = build_command(make_spec(), TCG)
    chardevs = option_values(argv, "-chardev")
    fds = fds_for(make_spec())
    console = next(c for c in chardevs if c.startswith("socket,id=console,"))
    assert console.startswith(f"socket,id=console,fd={fds.console},server=on,wait=off,")
    log_set = console.split("logfile=")[1].split(",")[0]
    assert fdset_of(argv, log_set) == [fds.console_log]
    assert option_values(argv, "-serial") == ["chardev:console"]
    assert f"socket,id=qmp,fd={fds.qmp},server=on,wait=off" in chardevs
    assert f"socket,id=balloonqmp,fd={fds.balloon},server=on,wait=off" in chardevs
    assert option_values(argv, "-mon") == ["chardev=qmp,mode=control",
                                           "chardev=balloonqmp,mode=control"]


def test_pci_passthrough_and_extra_disks() -> None:
    spec = make_spec(
        pci_devices=("/sys/bus/pci/devices/0000:01:00.0",),
        extra_disks=(
            DiskSpec(Path("/data/d.qcow2"), "data", False, format="qcow2", block_size=4096),
        ),
        extra_args=("-trace", "virtio_blk*"),
    )
    argv = build_command(spec, TCG)
    assert option_values(argv, "-machine")[0].startswith("microvm,pcie=on")
    devices = option_values(argv, "-device")
    assert "vfio-pci,sysfsdev=/sys/bus/pci/devices/0000:01:00.0" in devices
    assert (
        "virtio-blk-device,drive=disk0,serial=data,logical_block_size=4096,physical_block_size=4096"
    ) in devices
    assert any(d.startswith("file=/dev/fdset/") and d.endswith(",id=disk0,format=qcow2")
               for d in option_values(argv, "-drive"))
    assert argv[-2:] == ["-trace", "virtio_blk*"]


def test_shares_get_shared_memory_modern_mmio_and_a_vhost_user_fs_device() -> None:
    from vmsilo.hypervisor.spec import FsShare

    spec = make_spec(
        shares=(
            FsShare("vmsilo-home", Path("/run/vmsilo/banking/virtiofs-vmsilo-home/socket")),
            FsShare("docs", Path("/run/vmsilo/banking/virtiofs-docs/socket")),
        ),
        guest_shares=("vmsilo.share=vmsilo-home,/home/user,rw", "vmsilo.uid=1000:1000"),
    )
    argv = build_command(spec, TCG)
    (machine,) = option_values(argv, "-machine")
    assert machine.endswith(",memory-backend=ram")
    assert option_values(argv, "-object") == ["memory-backend-memfd,id=ram,size=2048M,share=on"]
    assert "virtio-mmio.force-legacy=false" in option_values(argv, "-global")
    chardevs = option_values(argv, "-chardev")
    assert f"socket,id=fs1,fd={fds_for(spec).shares[1]}" in chardevs
    devices = option_values(argv, "-device")
    assert "vhost-user-fs-device,chardev=fs0,tag=vmsilo-home" in devices
    assert "vhost-user-fs-device,chardev=fs1,tag=docs" in devices
    cmdline = option_values(argv, "-append")[0].split()
    assert "vmsilo.share=vmsilo-home,/home/user,rw" in cmdline and "vmsilo.uid=1000:1000" in cmdline


def test_without_shares_memory_is_private() -> None:
    argv = build_command(make_spec(), TCG)
    assert option_values(argv, "-object") == [] and option_values(argv, "-global") == []


def test_the_jail_sees_only_the_kernel_and_initramfs_and_locks_little_memory() -> None:
    spec = make_spec()
    sandbox = VmmJail(0x5003FFFF, 0x5003FFFF).sandbox(spec, TCG)
    assert sandbox.ro_binds == (Path("/img/vmlinuz"), Path("/img/initrd.img"))
    assert sandbox.dev_binds == () and not sandbox.share_net
    assert sandbox.limits.memlock == qemu_module.MEMLOCK_BASE
    argv = sandbox.argv(["qemu"])
    assert "--unshare-net" in argv and "--as-pid-1" in argv
    tail = argv[argv.index("setpriv"):]
    assert tail[:8] == ["setpriv", "--reuid=1342439423", "--regid=1342439423",
                        "--clear-groups", "--inh-caps=-all", "--ambient-caps=-all",
                        "--bounding-set=-all", "--no-new-privs"]
    assert KVM.name == "kvm" and VmmJail(1, 1).sandbox(spec, KVM).dev_binds == (
        Path("/dev/kvm"),)


def test_passthrough_locks_guest_memory_and_sees_vfio() -> None:
    spec = make_spec(pci_devices=("/sys/bus/pci/devices/0000:01:00.0",))
    sandbox = VmmJail(1, 1).sandbox(spec, TCG)
    assert Path("/dev/vfio") in sandbox.dev_binds and Path("/sys") in sandbox.ro_binds
    assert sandbox.limits.memlock == (qemu_module.MEMLOCK_BASE + (2048 << 20)
                                      + qemu_module.MEMLOCK_PCI_EXTRA)


def test_kernel_and_initramfs_are_shown_from_descriptors_at_fixed_places() -> None:
    spec = make_spec()
    fds = fds_for(spec)
    fds.kernel, fds.initrd = 90, 91
    argv = qemu_module.build_command(spec, TCG, fds)
    assert option_values(argv, "-kernel") == [str(qemu_module.JAIL_KERNEL)]
    assert option_values(argv, "-initrd") == [str(qemu_module.JAIL_INITRD)]
    assert "/img/" not in " ".join(argv)
    sandbox = VmmJail(1, 1).sandbox(spec, TCG, fds)
    assert sandbox.ro_binds == ()
    assert sandbox.fd_binds == ((90, qemu_module.JAIL_KERNEL), (91, qemu_module.JAIL_INITRD))
    bwrap = sandbox.argv(["qemu"])
    assert bwrap[bwrap.index("--ro-bind-fd"):][:3] == ["--ro-bind-fd", "90", "/vmsilo/vmlinuz"]
    assert {90, 91} <= set(fds.all())
