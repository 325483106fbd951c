"""The QEMU balloon driver against a real QEMU (microvm under TCG, no kernel): RAM and
logical-size translation, the stats polling property, 'never' stats, and no event history."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from qemu.qmp import QMPClient

from vmsilo.balloon.drivers.base import DriverError
from vmsilo.balloon.drivers.qemu import QemuBalloon, balloon_socket
from vmsilo.host import proc

pytestmark = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                                reason="qemu-system-x86_64 is not installed")

MIB = 1 << 20


@pytest.fixture
def qemu(tmp_path: Path) -> Iterator[Path]:
    socket = balloon_socket(tmp_path)
    vmm = proc.spawn(
        ["qemu-system-x86_64", "-M", "microvm", "-accel", "tcg", "-m", "512M", "-nodefaults",
         "-display", "none", "-device", "virtio-balloon-device,id=balloon0",
         "-qmp", f"unix:{socket},server=on,wait=off",
         # a second monitor, as vmsilod has: QEMU serves one client per QMP socket
         "-qmp", f"unix:{tmp_path / 'vmm.sock'},server=on,wait=off"],
    )  # fmt: skip
    try:
        for _ in range(200):
            if socket.exists() or vmm.poll() is not None:
                break
            time.sleep(0.05)
        assert socket.exists(), "QEMU did not create its QMP socket"
        yield socket
    finally:
        vmm.kill()
        vmm.wait(10)


@pytest.fixture
async def driver(qemu: Path) -> AsyncIterator[QemuBalloon]:
    balloon = QemuBalloon("test", qemu, stats_interval=2)
    await balloon.connect()
    try:
        yield balloon
    finally:
        await balloon.close()


async def test_reads_ram_and_an_empty_balloon(driver: QemuBalloon) -> None:
    assert driver.ram == 512 * MIB
    assert await driver.actual() == 0


async def test_enables_stats_polling(driver: QemuBalloon) -> None:
    assert await driver.stats_polling_interval() == 2


async def test_no_guest_means_no_stats(driver: QemuBalloon) -> None:
    assert await driver.stats() is None


async def test_set_target_is_accepted_and_bounded(driver: QemuBalloon) -> None:
    await driver.set_target(128 * MIB)
    await driver.set_target(0)
    with pytest.raises(ValueError, match="outside"):
        await driver.set_target(512 * MIB)
    with pytest.raises(ValueError, match="outside"):
        await driver.set_target(-1)


async def test_events_are_not_kept(qemu: Path, driver: QemuBalloon) -> None:
    other = QMPClient("other")
    await asyncio.wait_for(other.connect(str(qemu.parent / "vmm.sock")), 10)
    try:
        for _ in range(10):
            await other.execute("stop")
            await other.execute("cont")
    finally:
        await other.disconnect()
    await driver.actual()  # the session still works and has read past the events
    await asyncio.sleep(0.1)
    assert driver._qmp is not None
    assert driver._qmp.events.history == ()  # the default listener accepts nothing: no history


async def test_missing_socket_is_a_driver_error(tmp_path: Path) -> None:
    balloon = QemuBalloon("ghost", tmp_path / "nothing.sock", timeout=2)
    with pytest.raises(DriverError, match="cannot connect to QMP"):
        await balloon.connect()
