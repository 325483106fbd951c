"""Re-adoption from records alone (no VMM process at all): what a restarted vmsilod makes of a
runtime directory whose records name processes that are not its VMM, are links, FIFOs, too
big, foreign, or name other VMs' network. Nothing is signalled and nothing outside vmsilod's
own directories changes. The fake VMM's fault options round-trip through its command line."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import pytest

from tests.support.fake_core import ROOT, Core, SignalSpy
from vmsilo.daemon import resources
from vmsilo.daemon.runstate import Runstate
from vmsilo.host import safefs
from vmsilo.host.procid import ProcessIdentity
from vmsilo.hypervisor.spec import LaunchSpec
from vmsilo.testing.fake_vmm import Faults


@pytest.fixture
def core(tmp_path: Path) -> Core:
    return Core(tmp_path)  # nothing is launched here: nothing to clean up


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> SignalSpy:
    return SignalSpy().install(monkeypatch)


def left_behind(core: Core, vmm: object, name: str = "alpha") -> LaunchSpec:
    """The runtime dir, overlay and process record an earlier start would have left."""
    spec = core.plan(core.load().vms[name])
    resources.acquire_runtime_dir(spec).close()
    resources.acquire_overlay(spec)
    core.write_saved(name, resources.PROCESSES_FILE, {"vmm": vmm, "monitor": None})
    return spec


def other_start_time(pid: int) -> dict[str, object]:
    identity = ProcessIdentity.of(pid)
    assert identity is not None
    return {"pid": pid, "start": identity.start + 12345, "exe": identity.exe}


async def readopt(core: Core, caplog: pytest.LogCaptureFixture) -> bool:
    vm = core.restarted()
    with caplog.at_level(logging.INFO, logger="vmsilo.daemon.vm"):
        adopted = await vm.readopt(core.runtime_dir())
    assert vm.state is not Runstate.RUNNING or adopted
    return adopted


def cleaned(core: Core) -> bool:
    return (not core.runtime_dir().exists() and not core.overlay().exists()
            and core.canaries_intact() == [])


@pytest.mark.parametrize("whom", ["this test", "its parent"])
async def test_a_record_naming_a_live_process_with_another_start_time_signals_nothing(
        core: Core, caplog: pytest.LogCaptureFixture, spy: SignalSpy, whom: str) -> None:
    pid = os.getpid() if whom == "this test" else os.getppid()
    before = ProcessIdentity.of(pid)
    left_behind(core, other_start_time(pid))
    assert not await readopt(core, caplog)
    assert "its VMM is gone; cleaning up" in caplog.text
    assert spy.sent == []
    assert ProcessIdentity.of(pid) == before
    assert cleaned(core)


async def test_a_record_naming_pid_1_is_refused_as_malformed(
        core: Core, caplog: pytest.LogCaptureFixture, spy: SignalSpy) -> None:
    left_behind(core, {"pid": 1, "start": 1, "exe": "/sbin/init"})
    assert not await readopt(core, caplog)
    assert "its process record is malformed" in caplog.text
    assert spy.sent == [] and not core.runtime_dir().exists()


async def test_the_vm_whose_vmm_is_gone_is_failed_with_the_reason(
        core: Core, caplog: pytest.LogCaptureFixture) -> None:
    left_behind(core, other_start_time(os.getpid()))
    vm = core.restarted()
    assert not await vm.readopt(core.runtime_dir())
    row = vm.status_row()
    assert row["state"] == "failed"
    assert row["reason"] == "the VMM exited while vmsilod was not running"
    assert row["log"] == str(core.paths.vm_log_dir("alpha") / "console.log")


async def test_no_runtime_dir_is_nothing_to_adopt(core: Core,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    vm = core.restarted()
    with caplog.at_level(logging.WARNING):
        assert not await vm.readopt(core.runtime_dir())
    assert vm.state is Runstate.STOPPED and caplog.text == ""


@pytest.mark.parametrize("record", ["launch.json", "processes.json"])
async def test_a_link_planted_as_a_record_is_refused_and_its_target_untouched(
        core: Core, caplog: pytest.LogCaptureFixture, spy: SignalSpy, record: str) -> None:
    left_behind(core, other_start_time(os.getpid()))
    path = core.runtime_dir() / record
    path.unlink()
    path.symlink_to(core.canaries[0].path)
    assert not await readopt(core, caplog)
    assert "is a symbolic link" in caplog.text or "unreadable" in caplog.text
    assert spy.sent == []
    assert not core.runtime_dir().exists() and core.canaries_intact() == []


async def test_a_fifo_as_launch_spec_is_refused_without_hanging(
        core: Core, caplog: pytest.LogCaptureFixture, spy: SignalSpy) -> None:
    left_behind(core, other_start_time(os.getpid()))
    launch = core.runtime_dir() / "launch.json"
    launch.unlink()
    os.mkfifo(launch, 0o600)
    assert not await readopt(core, caplog)
    assert "not a regular file" in caplog.text
    assert spy.sent == [] and not core.runtime_dir().exists()


async def test_an_oversized_launch_spec_is_refused(
        core: Core, caplog: pytest.LogCaptureFixture) -> None:
    left_behind(core, other_start_time(os.getpid()))
    with open(core.runtime_dir() / "launch.json", "r+b") as launch:
        launch.truncate(safefs.READ_LIMIT + 1)
    assert not await readopt(core, caplog)
    assert "larger than" in caplog.text
    assert not core.runtime_dir().exists()


@pytest.mark.skipif(not ROOT, reason="chown needs root")
async def test_a_record_of_another_owner_is_refused(
        core: Core, caplog: pytest.LogCaptureFixture, spy: SignalSpy) -> None:
    left_behind(core, other_start_time(os.getpid()))
    os.chown(core.runtime_dir() / "launch.json", 65534, 65534)
    assert not await readopt(core, caplog)
    assert "not a regular file of uid 0" in caplog.text
    assert spy.sent == [] and not core.runtime_dir().exists()


@pytest.mark.parametrize("text", ["", "null", "[]", '{"name": "alpha"}', "{" * 100])
async def test_a_malformed_launch_spec_is_refused(
        core: Core, caplog: pytest.LogCaptureFixture, spy: SignalSpy, text: str) -> None:
    left_behind(core, other_start_time(os.getpid()))
    core.write_saved("alpha", "launch.json", text)
    assert not await readopt(core, caplog)
    assert "its launch spec is unreadable" in caplog.text
    assert spy.sent == [] and not core.runtime_dir().exists()
    assert core.canaries_intact() == []


async def test_a_network_record_naming_other_vms_taps_is_ignored(
        core: Core, caplog: pytest.LogCaptureFixture) -> None:
    """Removing it would tear down another VM's network (and spawn ip/nft: refused here)."""
    left_behind(core, other_start_time(os.getpid()))
    tap = {"name": "beta-22", "owner": "root", "vm": "beta", "interface": "wan",
           "guest_mac": "02:00:00:00:00:01"}
    core.write_saved("alpha", "network.json", {"taps": [tap], "bridges": [],
                                               "required_bridges": [], "tables": [],
                                               "forwarding_interfaces": []})
    assert not await readopt(core, caplog)
    assert "names TAPs of other VMs (beta-22); it is ignored" in caplog.text
    assert "undoing network failed" not in caplog.text
    assert cleaned(core)


async def test_a_link_planted_as_the_network_record_is_not_followed(
        core: Core, caplog: pytest.LogCaptureFixture) -> None:
    left_behind(core, other_start_time(os.getpid()))
    (core.runtime_dir() / "network.json").symlink_to(core.canaries[1].path)
    assert not await readopt(core, caplog)
    assert "cannot use its network record" in caplog.text
    assert cleaned(core)


# -- the fake VMM's knobs -------------------------------------------------------------------------


@pytest.mark.parametrize("faults", [
    Faults(),
    Faults(exit_at_start=0),
    Faults(slow_start=1.5, boot_delay=0.25, crash_after=3.0, crash_status=9),
    Faults(no_hello=True, ignore_poweroff=True, ignore_quit=True, poweroff_delay=0.5),
])
def test_faults_round_trip_through_the_command_line(faults: Faults) -> None:
    parser = argparse.ArgumentParser()
    Faults.add_arguments(parser)
    assert Faults.from_args(parser.parse_args(faults.argv())) == faults
    assert (faults.argv() == []) == (faults == Faults())

