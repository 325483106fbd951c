"""The KVM probe's firmware really reaches protected mode and signals: run it under TCG, which
always works, so that a probe timeout under KVM can only mean KVM itself is broken."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from vmsilo.host import proc
from vmsilo.hypervisor import accel

pytestmark = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                                reason="qemu-system-x86_64 is not installed")


def test_probe_firmware_signals_under_tcg(tmp_path: Path) -> None:
    firmware = tmp_path / "probe.bin"
    firmware.write_bytes(accel.probe_firmware())
    result = proc.run(
        ["qemu-system-x86_64", "-accel", "tcg", "-M", "pc", "-m", "16", "-bios", str(firmware),
         "-display", "none", "-serial", "none", "-monitor", "none", "-nodefaults",
         "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"],
        check=False, timeout=30,
    )  # fmt: skip
    assert result.returncode == accel.EXPECTED_STATUS


def test_probe_gives_a_decision_with_a_reason() -> None:
    chosen = accel.probe_kvm()
    assert chosen.name in ("kvm", "tcg")
    assert chosen.reason
    if chosen.name == "kvm":
        assert "ran a test guest" in chosen.reason or "VMSILO_ACCEL" in chosen.reason
