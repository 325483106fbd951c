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
