"""balloond's loop over in-memory guests (``simulate.GuestModel`` behind a driver): VMs found
in the runtime directory and forgotten when they go, balloons moved, stalled and unreachable
guests left alone and reported, and the status file ``vmsilo balloon status`` reads."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from vmsilo.balloon.daemon import Balloond, find_vms
from vmsilo.balloon.drivers.base import BalloonDriver, DriverError, GuestStats, VmmReplyError
from vmsilo.balloon.settings import BalloonSettings
from vmsilo.balloon.simulate import GuestModel

MIB = 1 << 20
GIB = 1 << 30


class ModelDriver(BalloonDriver):
    """A driver whose VM is a ``GuestModel``; ``fail`` makes its next calls raise.
    ``reports_available`` False stands for a guest without the MemAvailable stat."""

    def __init__(self, vm: str, guest: GuestModel) -> None:
        super().__init__(vm)
        self.guest = guest
        self.reports_available = True
        self.stamp = 0.0
        self.frozen = False
        self.fail: DriverError | None = None
        self.connects = 0

    async def connect(self) -> None:
        if self.fail is not None:
            raise self.fail
        self.connects += 1

    async def stats(self) -> GuestStats | None:
        if self.fail is not None:
            raise self.fail
        if not self.frozen:
            self.stamp += 1
        g = self.guest
        return GuestStats(g.available if self.reports_available else None, g.free, g.total,
                          g.cached, self.stamp)

    async def actual(self) -> int:
        return self.guest.balloon

    async def set_target(self, balloon_bytes: int) -> None:
        self.guest.move_balloon_towards(balloon_bytes)


def _vm_dir(run_dir: Path, name: str, balloon: bool = True) -> Path:
    directory = run_dir / name
    directory.mkdir(parents=True)
    (directory / "launch.json").write_text(json.dumps({"name": name, "balloon": balloon}))
    (directory / "balloon.sock").touch()
    return directory


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Balloond, dict[str, ModelDriver]]:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemTotal: {8 * GIB // 1024} kB\nMemAvailable: {400 * MIB // 1024} kB\n")
    drivers: dict[str, ModelDriver] = {}

    def make(vm: str, _runtime_dir: Path) -> BalloonDriver:
        drivers[vm] = ModelDriver(vm, GuestModel(vm, total=2 * GIB, demand=300 * MIB,
                                                 cache_want=200 * MIB))
        return drivers[vm]

    daemon = Balloond(run_dir, BalloonSettings(), meminfo=meminfo,
                      pressure=tmp_path / "no-psi", make_driver=make, stall_after=3.0)
    return daemon, drivers


def test_only_vms_with_a_balloon_and_its_socket_are_found(tmp_path: Path) -> None:
    _vm_dir(tmp_path, "a")
    _vm_dir(tmp_path, "b", balloon=False)
    (_vm_dir(tmp_path, "c") / "balloon.sock").unlink()
    (tmp_path / "stray").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "launch.json").write_text("{not json")
    assert find_vms(tmp_path) == {"a": tmp_path / "a"}


def test_an_idle_guest_gives_memory_to_a_tight_host(
    setup: tuple[Balloond, dict[str, ModelDriver]],
) -> None:
    daemon, drivers = setup
    _vm_dir(daemon.run_dir, "a")
    for _ in range(30):
        asyncio.run(daemon.tick())
    guest = drivers["a"].guest
    assert guest.balloon > 500 * MIB
    assert guest.available >= BalloonSettings().critical_guest_available
    status = json.loads(daemon.status_path.read_text())
    row = status["vms"]["a"]
    assert row["actual"] == guest.balloon and row["state"] == "fresh"
    assert status["host"]["available"] == 400 * MIB and status["ticks"] == 30


@pytest.mark.parametrize("reports_available", [True, False])
def test_a_guest_full_of_tmpfs_is_not_inflated(
    setup: tuple[Balloond, dict[str, ModelDriver]], reports_available: bool,
) -> None:
    """Issue 15 (17) through the daemon: 150 MiB free, 100 MiB of clean cache, 1.7 GiB of
    shmem, host tight. The guest's "disk caches" stat says 1.8 GiB; balloond goes by its
    MemAvailable (250 MiB, under the floor) and takes nothing."""
    daemon, drivers = setup
    _vm_dir(daemon.run_dir, "a")
    asyncio.run(daemon.tick())  # the driver is made on the first tick
    guest = drivers["a"].guest
    guest.balloon = 0  # the guest's workload now fills it: start again from an empty balloon
    shmem = int(1.7 * GIB)
    guest.demand = guest.total - 150 * MIB - 100 * MIB - shmem
    guest.shmem, guest.cache_want = shmem, 100 * MIB
    drivers["a"].reports_available = reports_available
    assert (guest.free, guest.cached, guest.available) == (150 * MIB, 100 * MIB + shmem,
                                                            250 * MIB)
    for _ in range(5):
        asyncio.run(daemon.tick())
        row = json.loads(daemon.status_path.read_text())["vms"]["a"]
        assert guest.balloon == 0, row
        assert row["guestAvailable"] == (250 * MIB if reports_available else 150 * MIB)


def test_a_stalled_guest_is_left_alone_and_reported(
    setup: tuple[Balloond, dict[str, ModelDriver]],
) -> None:
    daemon, drivers = setup
    _vm_dir(daemon.run_dir, "a")
    asyncio.run(daemon.tick())
    drivers["a"].frozen = True
    balloon = drivers["a"].guest.balloon
    rows = []
    for _ in range(3):
        asyncio.run(daemon.tick())
        rows.append(json.loads(daemon.status_path.read_text())["vms"]["a"])
    assert drivers["a"].guest.balloon == balloon
    assert all(r["reason"].startswith("left alone") for r in rows)


@pytest.mark.parametrize("error", [DriverError("a", "QMP query-balloon failed: gone"),
                                   VmmReplyError("a", "balloon actual is not a size")])
def test_an_unreachable_or_lying_vmm_is_reported_and_retried(
    setup: tuple[Balloond, dict[str, ModelDriver]], error: DriverError,
) -> None:
    daemon, drivers = setup
    _vm_dir(daemon.run_dir, "a")
    asyncio.run(daemon.tick())
    drivers["a"].fail = error
    asyncio.run(daemon.tick())
    row = json.loads(daemon.status_path.read_text())["vms"]["a"]
    assert row == {"state": "unreachable", "reason": error.reason}
    drivers["a"].fail = None
    asyncio.run(daemon.tick())
    assert drivers["a"].connects == 2  # reconnected
    assert json.loads(daemon.status_path.read_text())["vms"]["a"]["state"] == "fresh"


def test_a_vm_that_goes_is_forgotten(setup: tuple[Balloond, dict[str, ModelDriver]]) -> None:
    daemon, _drivers = setup
    directory = _vm_dir(daemon.run_dir, "a")
    asyncio.run(daemon.tick())
    (directory / "balloon.sock").unlink()
    asyncio.run(daemon.tick())
    assert json.loads(daemon.status_path.read_text())["vms"] == {}
