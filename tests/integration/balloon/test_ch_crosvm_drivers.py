"""The cloud-hypervisor and crosvm balloon drivers against fakes that speak their wire formats
over real unix sockets: resize, actual, stats, the missing-stats probe, hostile replies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from vmsilo.balloon.drivers.base import DriverError, VmmReplyError
from vmsilo.balloon.drivers.cloud_hypervisor import CloudHypervisorBalloon
from vmsilo.balloon.drivers.crosvm import CrosvmBalloon
from vmsilo.testing.balloon_fakes import FakeCloudHypervisor, FakeCrosvm

MIB = 1 << 20
STATS = {"swap_in": 0, "swap_out": 0, "free_memory": 600 * MIB, "total_memory": 2000 * MIB,
         "available_memory": 900 * MIB, "disk_caches": 250 * MIB, "oom_kills": 0}


@pytest.fixture
async def ch(tmp_path: Path) -> AsyncIterator[FakeCloudHypervisor]:
    async with FakeCloudHypervisor(tmp_path / "api.sock", memory=2048 * MIB,
                                   stats=dict(STATS)) as fake:
        yield fake


@pytest.fixture
async def crosvm(tmp_path: Path) -> AsyncIterator[FakeCrosvm]:
    async with FakeCrosvm(tmp_path / "crosvm.sock", stats=dict(STATS)) as fake:
        yield fake


async def test_ch_resize_and_actual(ch: FakeCloudHypervisor) -> None:
    driver = CloudHypervisorBalloon("vm", ch.socket)
    assert await driver.actual() == 0
    await driver.set_target(300 * MIB)
    assert ch.requests[-1] == ("PUT", "/api/v1/vm.resize", b'{"desired_balloon": 314572800}')
    assert await driver.actual() == 300 * MIB


async def test_ch_stats(ch: FakeCloudHypervisor) -> None:
    stats = await CloudHypervisorBalloon("vm", ch.socket).stats()
    assert stats is not None
    assert (stats.free, stats.caches, stats.total, stats.available) == (
        600 * MIB, 250 * MIB, 2000 * MIB, 900 * MIB)
    assert stats.last_update > 0


async def test_ch_without_the_stats_endpoint_is_probed_once(tmp_path: Path) -> None:
    async with FakeCloudHypervisor(tmp_path / "old.sock", memory=MIB * 512) as fake:
        driver = CloudHypervisorBalloon("vm", fake.socket)
        assert await driver.stats() is None
        assert await driver.stats() is None
        assert driver.has_stats is False
        assert [r[1] for r in fake.requests] == ["/api/v1/vm.balloon-stats"]


async def test_ch_refused_resize_is_a_driver_error(ch: FakeCloudHypervisor) -> None:
    driver = CloudHypervisorBalloon("vm", ch.socket)
    with pytest.raises(DriverError, match="status 400"):
        await driver.set_target(4096 * MIB)  # more than the fake's RAM
    with pytest.raises(ValueError, match="outside"):
        await driver.set_target(-1)


@pytest.mark.parametrize(("raw", "message"), [
    (b"garbage\r\n\r\n", "status line"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n", "length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nnope!", "not JSON"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]", "not an object"),
    (b'HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n{"memory_actual_size": 1, "config": 7}  ',
     "config"),
    (b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"short": 1}', "shorter"),
])
async def test_ch_hostile_vm_info_is_rejected(ch: FakeCloudHypervisor, raw: bytes,
                                              message: str) -> None:
    ch.raw_reply = raw
    with pytest.raises(VmmReplyError, match=message):
        await CloudHypervisorBalloon("vm", ch.socket).actual()


@pytest.mark.parametrize(("stats", "message"), [
    ({"free_memory": -1, "total_memory": 10}, "free memory"),
    ({"free_memory": 1 << 60, "total_memory": 1 << 60}, "total memory"),
    ({"free_memory": 20, "total_memory": 10}, "more free memory"),
    ({"free_memory": "1", "total_memory": 10}, "free memory"),
    ({"free_memory": 1, "total_memory": 10, "disk_caches": True}, "disk caches"),
])
async def test_hostile_stats_are_rejected(ch: FakeCloudHypervisor, crosvm: FakeCrosvm,
                                          stats: dict[str, object], message: str) -> None:
    ch.stats = crosvm.stats = stats
    with pytest.raises(VmmReplyError, match=message):
        await CloudHypervisorBalloon("vm", ch.socket).stats()
    with pytest.raises(VmmReplyError, match=message):
        await CrosvmBalloon("vm", crosvm.socket).stats()


async def test_stats_without_free_or_total_mean_no_stats(crosvm: FakeCrosvm) -> None:
    crosvm.stats = {"disk_caches": 5}
    assert await CrosvmBalloon("vm", crosvm.socket).stats() is None


async def test_crosvm_adjust_actual_and_stats(crosvm: FakeCrosvm) -> None:
    driver = CrosvmBalloon("vm", crosvm.socket)
    assert await driver.actual() == 0
    await driver.set_target(100 * MIB + 123)
    assert crosvm.requests[-1] == {"BalloonCommand": {"Adjust": {
        "num_bytes": 100 * MIB + 123, "wait_for_success": False}}}
    assert await driver.actual() == 100 * MIB
    stats = await driver.stats()
    assert stats is not None and stats.free == 600 * MIB and stats.caches == 250 * MIB
    assert crosvm.requests[-1] == {"BalloonCommand": "Stats"}


async def test_crosvm_hung_guest_times_out(crosvm: FakeCrosvm) -> None:
    crosvm.stats = None
    with pytest.raises(DriverError, match="no reply in time"):
        await CrosvmBalloon("vm", crosvm.socket, timeout=0.3).stats()


@pytest.mark.parametrize(("raw", "message"), [
    (b"not json", "not JSON"),
    (b'{"Err": 22}', "refused"),
    (b'{"BalloonStats": {"stats": {}, "balloon_actual": -5}}', "balloon_actual"),
    (b'{"BalloonStats": []}', "BalloonStats"),
    (b'"Ok"', "not an object"),
])
async def test_crosvm_hostile_stats_reply_is_rejected(crosvm: FakeCrosvm, raw: bytes,
                                                      message: str) -> None:
    crosvm.raw_reply = raw
    with pytest.raises(DriverError, match=message):
        await CrosvmBalloon("vm", crosvm.socket).actual()


async def test_crosvm_unexpected_adjust_reply_is_rejected(crosvm: FakeCrosvm) -> None:
    crosvm.raw_reply = b'{"BalloonStats": {}}'
    with pytest.raises(VmmReplyError, match="adjust reply"):
        await CrosvmBalloon("vm", crosvm.socket).set_target(0)


async def test_missing_sockets_are_driver_errors(tmp_path: Path) -> None:
    with pytest.raises(DriverError):
        await CrosvmBalloon("vm", tmp_path / "none").actual()
    with pytest.raises(DriverError):
        await CloudHypervisorBalloon("vm", tmp_path / "none").actual()
