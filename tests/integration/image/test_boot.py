"""Boot the real image under QEMU (TCG here) and prove from the console what our init did.

One boot per overlay type: the console log must show our init mounting the erofs root and
the overlay, switching root, systemd starting, the hostname from the command line, and a
file written to / landing in the overlay's upper layer (read back from the overlay disk with
debugfs after power-off for the disk overlay, from the tmpfs for the tmpfs overlay).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from vmsilo.host import proc
from vmsilo.image.build import BuildResult

from .conftest import needs_root

pytestmark = [needs_root, pytest.mark.timeout(600)]

BOOT_TIMEOUT = 240.0


class Console:
    """QEMU with its serial console on a pipe: wait for text, type commands."""

    def __init__(self, command: list[str]) -> None:
        self.process = proc.spawn(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.output = ""
        self.started = time.monotonic()
        self.marks: dict[str, float] = {}
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in iter(lambda: self.process.stdout.read1(4096), b""):  # type: ignore[union-attr]
            with self._lock:
                self.output += raw.decode(errors="replace")

    def wait_for(self, pattern: str, timeout: float = BOOT_TIMEOUT) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                match = re.search(pattern, self.output)
            if match:
                self.marks.setdefault(pattern, time.monotonic() - self.started)
                return match
            if self.process.poll() is not None:
                time.sleep(0.2)
                break
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} on the console; output:\n{self.output[-4000:]}")

    def type(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def close(self, timeout: float = 60) -> None:
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def qemu_command(image: Path, overlay: Path | None, append: str) -> list[str]:
    command = [
        "qemu-system-x86_64",
        "-M", "q35", "-m", "1024", "-smp", "2",
        "-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot",
        "-kernel", str(image / "vmlinuz"),
        "-initrd", str(image / "initrd.img"),
        "-append", f"console=ttyS0 panic=-1 {append}",
        "-drive", f"file={image / 'rootfs.erofs'},format=raw,if=none,id=root,readonly=on",
        "-device", "virtio-blk-pci,drive=root,serial=vmsilo-root",
    ]  # fmt: skip
    if overlay is not None:
        command += [
            "-drive", f"file={overlay},format=raw,if=none,id=overlay,discard=unmap",
            "-device", "virtio-blk-pci,drive=overlay,serial=vmsilo-overlay",
        ]  # fmt: skip
    return command


def boot_and_probe(console: Console, hostname: str) -> str:
    """Wait for the autologin shell, write a file to /, print facts, power off."""
    console.wait_for(r"vmsilo-init: switching root to /sbin/init")
    console.wait_for(r"Welcome to .*Debian")
    # Kernel messages share the console and may land inside the prompt
    # ("tmpvm [ 10.61] ata5: ...\nlogin: root ..."): allow whole kernel lines in between.
    console.wait_for(rf"{hostname} (?:\[ *\d+\.\d+\][^\n]*\n)*login: root \(automatic login\)")
    console.wait_for(rf"root@{hostname}:~# ")
    # Output is built by the shell ($(...)) so that the echoed command line never matches.
    console.type(
        "echo probe > /vmsilo-probe; sync; "
        'echo "HOSTNAME=$(cat /etc/hostname) ROOTFS=$(findmnt -n -o FSTYPE /)"; '
        'echo "UPPER=$(ls /run/vmsilo/overlay/upper/)"; '
        'echo "LOWER=$(findmnt -n -o FSTYPE /run/vmsilo/root)"; '
        'echo "OVL=$(findmnt -n -o FSTYPE /run/vmsilo/overlay)"; '
        'echo "AGENT=$(systemctl is-enabled vmsilo-agent.service)"; '
        'echo "USER=$(id -u user):$(id -g user):$(getent passwd user | cut -d: -f6,7)"; '
        "poweroff"
    )
    console.wait_for(r"reboot: Power down", timeout=120)
    console.close()
    return console.output


def test_boot_with_disk_overlay(built_image: BuildResult, tmp_path: Path) -> None:
    overlay = tmp_path / "overlay.raw"
    with overlay.open("wb") as handle:
        handle.truncate(1 << 30)  # sparse and blank, as the backend creates it
    console = Console(
        qemu_command(built_image.path, overlay, "vmsilo.name=diskvm vmsilo.overlay=disk")
    )
    output = boot_and_probe(console, "diskvm")

    assert "vmsilo-init: root /dev/vda (erofs) mounted read-only" in output
    assert "vmsilo-init: formatting overlay disk /dev/vdb (ext4)" in output
    assert "vmsilo-init: overlay on disk /dev/vdb (ext4)" in output
    assert "HOSTNAME=diskvm ROOTFS=overlay" in output
    assert "LOWER=erofs" in output
    assert "OVL=ext4" in output
    assert re.search(r"UPPER=.*vmsilo-probe", output, re.S)
    assert "AGENT=enabled" in output
    assert "USER=1000:1000:/home/user:/bin/bash" in output
    # The write landed on the overlay disk: read it back from the powered-off disk.
    debugfs = shutil.which("debugfs") or "/sbin/debugfs"
    stored = proc.run([debugfs, "-R", "cat /upper/vmsilo-probe", str(overlay)])
    assert stored.stdout == "probe\n"
    systemd_at = console.marks[r"Welcome to .*Debian"]
    print(f"disk overlay: systemd started {systemd_at:.1f} s after QEMU started")


def test_boot_with_tmpfs_overlay_and_existing_disk_is_not_needed(
    built_image: BuildResult,
) -> None:
    console = Console(
        qemu_command(
            built_image.path,
            None,
            "vmsilo.name=tmpvm vmsilo.overlay=tmpfs vmsilo.overlay_size=268435456",
        )
    )
    output = boot_and_probe(console, "tmpvm")
    assert "vmsilo-init: overlay on tmpfs of 268435456 bytes" in output
    assert "HOSTNAME=tmpvm ROOTFS=overlay" in output
    assert "OVL=tmpfs" in output
    assert re.search(r"UPPER=.*vmsilo-probe", output, re.S)
    systemd_at = console.marks[r"Welcome to .*Debian"]
    print(f"tmpfs overlay: systemd started {systemd_at:.1f} s after QEMU started")


def test_boot_failure_is_explained_on_the_console(built_image: BuildResult) -> None:
    # No overlay disk attached although the command line asks for one.
    console = Console(qemu_command(built_image.path, None, "vmsilo.name=x vmsilo.overlay=disk"))
    console.wait_for(r"vmsilo-init: no overlay disk: no block device with serial vmsilo-overlay")
    console.wait_for(r"vmsilo-init: halting")
    console.wait_for(r"reboot: Power down", timeout=60)
    console.close()
