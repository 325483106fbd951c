"""The KVM probe's firmware layout, and the accelerator's QEMU arguments."""

from __future__ import annotations

import pytest

from vmsilo.hypervisor import accel


def test_firmware_is_64k_with_a_reset_vector_jumping_to_the_probe() -> None:
    image = accel.probe_firmware()
    assert len(image) == 0x10000
    assert image[0xFFF0] == 0xE9  # near jmp
    target = (0xFFF3 + int.from_bytes(image[0xFFF1:0xFFF3], "little")) & 0xFFFF
    assert target == 0
    assert image[0] == 0xFA  # cli: the probe starts there
    assert bytes([0xB0, accel.EXIT_VALUE, 0xE6, 0xF4]) in image  # mov al, v; out 0xf4, al


def test_forced_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMSILO_ACCEL", "tcg")
    chosen = accel.probe_kvm()
    assert chosen.name == "tcg" and "VMSILO_ACCEL" in chosen.reason
    assert chosen.qemu_args == ["-accel", "tcg,thread=multi", "-cpu", "max"]


CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
cpu MHz\t\t: 2596.124
flags\t\t: fpu vme tsc msr constant_tsc nonstop_tsc tsc_known_freq

processor\t: 1
cpu MHz\t\t: 1200.000
flags\t\t: fpu tsc constant_tsc
"""


def test_host_tsc_frequency_from_cpuinfo() -> None:
    assert accel.host_tsc_khz(CPUINFO) == 2596124
    assert accel.host_tsc_khz(CPUINFO.replace(" constant_tsc", "")) is None  # rate may vary
    assert accel.host_tsc_khz("processor\t: 0\nflags\t: constant_tsc\n") is None
    assert accel.host_tsc_khz("") is None


def test_tcg_guests_are_told_the_tsc_frequency(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "host_tsc_khz", lambda: 2596124)
    assert accel.Accelerator("tcg", "test").kernel_params == ["tsc_early_khz=2596124"]
    assert accel.Accelerator("kvm", "test").kernel_params == []  # kvmclock knows it
