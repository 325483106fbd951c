"""Choose the CPU accelerator for QEMU: KVM when it really runs a guest, TCG otherwise.

``/dev/kvm`` existing is not enough: some hosts (nested setups, the PVM flavour of KVM) expose
a device on which ordinary guests hang as soon as they leave real mode. So the probe boots a
64 KiB firmware that switches to 32-bit protected mode and then writes one byte to QEMU's
``isa-debug-exit`` port; QEMU then exits with a known status. If that does not happen within a
few seconds, KVM is not usable and TCG (software emulation) is chosen. The result, with its
reason, is cached per process: the choice is made once and said once.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vmsilo.host import proc

# Exit code QEMU returns when the guest writes EXIT_VALUE to isa-debug-exit: (v << 1) | 1.
EXIT_VALUE = 0x42
EXPECTED_STATUS = (EXIT_VALUE << 1) | 1
PROBE_TIMEOUT = 3.0


@dataclass(frozen=True)
class Accelerator:
    name: str  # "kvm" or "tcg"
    reason: str

    @property
    def kernel_params(self) -> list[str]:
        """Guest kernel parameters this accelerator needs.

        Under TCG the guest's TSC ticks at the host's TSC rate, and a microvm has no HPET or
        ACPI PM timer. The guest measures its TSC against the PIT in a short window; on a busy
        host the emulated CPU is descheduled during it, calibration fails, the TSC is marked
        unusable and the kernel then waits forever in its delay-loop calibration (one boot in
        five hung so, seen here). Telling it the frequency skips the measurement."""
        if self.name != "tcg":
            return []
        khz = host_tsc_khz()
        return [f"tsc_early_khz={khz}"] if khz else []

    @property
    def qemu_args(self) -> list[str]:
        if self.name == "kvm":
            return ["-accel", "kvm", "-cpu", "host"]
        # "max" gives TCG every feature it emulates; thread=multi lets vCPUs use both cores.
        return ["-accel", "tcg,thread=multi", "-cpu", "max"]

    def describe(self) -> str:
        return f"{self.name.upper()} ({self.reason})"


# Firmware body, loaded at 0xFFFF0000 (assembled from this source with GNU as --32):
#   .code16: cli; cs: o32 lgdt [gdt_desc]; set CR0.PE; o32 ljmp 0x08:pm32
#   .code32 pm32: mov ds, 0x10; mov al, 0x42; out 0xf4, al; hlt loop
#   gdt: null, flat code (0x00cf9a000000ffff), flat data (0x00cf92000000ffff); gdt_desc
# A real-mode-only probe is not enough: broken KVM flavours run real mode fine and hang at the
# switch to protected mode, exactly where a Linux guest's setup code goes next.
_PROTECTED_MODE_PROBE = bytes.fromhex(
    "fa2e660f011640000f20c00c010f22c0"
    "66ea1800ffff080066b810008ed8b042"
    "e6f4f4ebfd8d76000000000000000000"
    "ffff0000009acf00ffff00000092cf00"
    "17002800ffff"
)


def host_tsc_khz(cpuinfo: str | None = None) -> int | None:
    """The host's TSC frequency in kHz, when the host TSC runs at a constant rate (the
    "constant_tsc" flag) and /proc/cpuinfo states it; else None."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    first_cpu = cpuinfo.split("\n\n", 1)[0]
    fields = dict(
        (key.strip(), value.strip())
        for key, sep, value in (line.partition(":") for line in first_cpu.splitlines())
        if sep
    )
    if "constant_tsc" not in fields.get("flags", "").split():
        return None
    try:
        mhz = float(fields["cpu MHz"])
    except (KeyError, ValueError):
        return None
    return round(mhz * 1000) if mhz > 0 else None


def probe_firmware() -> bytes:
    """A 64 KiB BIOS image: the reset vector jumps to the protected-mode probe at its start."""
    image = bytearray(b"\xf4" * 0x10000)  # hlt everywhere else
    image[: len(_PROTECTED_MODE_PROBE)] = _PROTECTED_MODE_PROBE
    # Reset vector (offset 0xFFF0, real mode, segment base 0xFFFF0000): near jmp to offset 0.
    image[0xFFF0:0xFFF3] = b"\xe9" + ((0 - 0xFFF3) & 0xFFFF).to_bytes(2, "little")
    return bytes(image)


def probe_kvm(qemu: str = "qemu-system-x86_64") -> Accelerator:
    forced = os.environ.get("VMSILO_ACCEL", "").strip().lower()
    if forced in ("kvm", "tcg"):
        return Accelerator(forced, "forced by VMSILO_ACCEL")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return Accelerator("tcg", "/dev/kvm is missing or not accessible")
    if shutil.which(qemu) is None:
        return Accelerator("tcg", f"{qemu} not found to probe KVM")
    with tempfile.TemporaryDirectory(prefix="vmsilo-kvm-probe-") as tmp:
        firmware = Path(tmp) / "probe.bin"
        firmware.write_bytes(probe_firmware())
        command = [
            qemu, "-accel", "kvm", "-M", "pc", "-m", "16", "-bios", str(firmware),
            "-display", "none", "-serial", "none", "-monitor", "none", "-nodefaults",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
        ]  # fmt: skip
        try:
            result = proc.run(command, check=False, timeout=PROBE_TIMEOUT)
        except proc.ProcessError as exc:
            reason = f"/dev/kvm is present but a test guest did not finish: {exc.reason}"
            return Accelerator("tcg", reason)
    if result.returncode == EXPECTED_STATUS:
        return Accelerator("kvm", "/dev/kvm ran a test guest")
    detail = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
    return Accelerator("tcg", f"/dev/kvm is present but a test guest failed: {detail}")


@functools.cache
def choose_accelerator() -> Accelerator:
    return probe_kvm()
