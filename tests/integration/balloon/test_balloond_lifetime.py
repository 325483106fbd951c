"""vmsilo-balloond's lifetime (issue 15): it outlives a vmsilod restart (VMs keep running and
keep being balanced) but not vmsilod's end: ``make demo`` left it running after it had
stopped vmsilod. Runs ``Balloond.run`` for real (inotify) over in-memory guests."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.unit.balloon.test_daemon import ModelDriver, _vm_dir
from vmsilo.balloon.daemon import Balloond
from vmsilo.balloon.drivers.base import BalloonDriver
from vmsilo.balloon.settings import BalloonSettings
from vmsilo.balloon.simulate import GuestModel
from vmsilo.daemon import balloond
from vmsilo.host.paths import Mode, Paths
from vmsilo.host.procid import ProcessIdentity
from vmsilo.host.safefs import Dir

MIB = 1 << 20
GIB = 1 << 30


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Balloond, dict[str, ModelDriver]]:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemTotal: {8 * GIB // 1024} kB\nMemAvailable: {4 * GIB // 1024} kB\n")
    drivers: dict[str, ModelDriver] = {}

    def make(vm: str, _runtime_dir: Path) -> BalloonDriver:
        drivers[vm] = ModelDriver(vm, GuestModel(vm, total=2 * GIB, demand=300 * MIB))
        return drivers[vm]

    daemon = Balloond(run_dir, BalloonSettings(), meminfo=meminfo,
                      pressure=tmp_path / "no-psi", make_driver=make)
    return daemon, drivers


async def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_balloond_outlives_a_vmsilod_restart_but_not_its_end(
    setup: tuple[Balloond, dict[str, ModelDriver]],
) -> None:
    """Issue 15: ``make demo`` left balloond running after vmsilod's end. It stays while
    vmsilod's socket is gone but VMs run (a restart re-adopts them), and while vmsilod runs
    with no VM; it exits once vmsilod is gone and no VM remains."""
    daemon, _drivers = setup
    control = daemon.run_dir / "control.socket"
    control.touch()
    vm_dir = _vm_dir(daemon.run_dir, "a")

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        await _until(lambda: "a" in daemon.vms)
        control.unlink()  # vmsilod restarting: the VM runs on
        ticks = daemon.ticks
        await _until(lambda: daemon.ticks > ticks)
        assert not task.done()
        control.touch()  # the next vmsilod
        shutil.rmtree(vm_dir)  # its VM stops; vmsilod runs on with none
        await _until(lambda: not daemon.vms)
        ticks = daemon.ticks
        await _until(lambda: daemon.ticks > ticks)
        assert not task.done()
        control.unlink()  # vmsilod ends for good with no VM: balloond follows at once
        await asyncio.wait_for(task, 5)
        assert not daemon.status_path.exists()

    asyncio.run(scenario())


def test_a_balloond_run_by_hand_without_vmsilod_keeps_running(
    setup: tuple[Balloond, dict[str, ModelDriver]],
) -> None:
    daemon, _drivers = setup

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        await _until(lambda: daemon.ticks >= 1)
        vm_dir = _vm_dir(daemon.run_dir, "a")
        await _until(lambda: "a" in daemon.vms)
        shutil.rmtree(vm_dir)
        await _until(lambda: not daemon.vms)
        assert not task.done() and not daemon.orphaned()
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(scenario())


def test_balloond_leaves_with_its_runtime_directory(
    setup: tuple[Balloond, dict[str, ModelDriver]],
) -> None:
    daemon, _drivers = setup
    _vm_dir(daemon.run_dir, "a")

    async def scenario() -> None:
        task = asyncio.create_task(daemon.run(asyncio.Event()))
        await _until(lambda: "a" in daemon.vms)
        shutil.rmtree(daemon.run_dir)
        await asyncio.wait_for(task, 10)

    asyncio.run(scenario())


# --- vmsilod's side: ``daemon.balloond.stop_for_good`` and vmsilod's exit --------------------

BIN = Path(sys.executable).parent


def _wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_vmsilod_s_end_with_no_vm_stops_balloond(tmp_path: Path, signum: int) -> None:
    """``vmsilo daemon`` ended (as ``make demo`` ends it, with its VMs stopped first): the
    balloond it started is gone when it has exited, and so is its record."""
    from tests.integration.daemon.test_daemon_process import daemon_env

    env = daemon_env(tmp_path)
    paths = Paths.under(tmp_path / "root", Mode.SYSTEM)
    daemon = subprocess.Popen([str(BIN / "vmsilo"), "daemon"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert _wait_for(lambda: balloond.running_pid(paths) is not None), "no balloond"
        pid = balloond.running_pid(paths)
        assert pid is not None
        identity = ProcessIdentity.of(pid)
        assert identity is not None
        daemon.send_signal(signum)
        daemon.wait(30)
        assert not identity.alive(), "vmsilo-balloond outlived vmsilod's end"
        assert not (paths.run_dir / balloond.PIDFILE).exists()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        balloond.stop(paths)


def test_stop_for_good_kills_a_balloond_that_ignores_sigterm(tmp_path: Path) -> None:
    paths = Paths.under(tmp_path / "root", Mode.SYSTEM)
    with Dir.secure(paths.run_dir, mode=0o755):
        pass
    stubborn = subprocess.Popen([sys.executable, "-c",
                                 "import signal, time; signal.signal(signal.SIGTERM, "
                                 "signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"],
                                stdout=subprocess.PIPE)
    try:
        assert stubborn.stdout is not None and stubborn.stdout.readline() == b"ready\n"
        identity = ProcessIdentity.of(stubborn.pid)
        assert identity is not None
        with Dir.secure(paths.run_dir, create=False) as run:
            run.write_atomic(balloond.PIDFILE, json.dumps(identity.to_json()))
        assert balloond.stop_for_good(paths, grace=0.5)
        assert not identity.alive()  # killed, and reaped by stop_for_good (our child here)
        assert not (paths.run_dir / balloond.PIDFILE).exists()
        assert not balloond.stop_for_good(paths)  # nothing recorded: nothing to do
    finally:
        if stubborn.poll() is None:
            stubborn.kill()
            stubborn.wait()


def test_stop_for_good_never_signals_a_reused_pid(tmp_path: Path) -> None:
    """A record whose process has gone (its pid now someone else's, or no one's) only goes."""
    paths = Paths.under(tmp_path / "root", Mode.SYSTEM)
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        identity = ProcessIdentity.of(bystander.pid)
        assert identity is not None
        stale = ProcessIdentity.from_json({**identity.to_json(),
                                           "start": identity.start + 1})
        with Dir.secure(paths.run_dir, mode=0o755) as run:
            run.write_atomic(balloond.PIDFILE, json.dumps(stale.to_json()))
        assert not balloond.stop_for_good(paths, grace=0.5)
        assert bystander.poll() is None
        assert not (paths.run_dir / balloond.PIDFILE).exists()
    finally:
        bystander.kill()
        bystander.wait()
