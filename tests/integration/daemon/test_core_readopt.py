"""Re-adoption by a restarted vmsilod, with a live fake VMM left by the previous one: taken over
from the root-owned runtime directory when its records are this VM's own and name the very
process that runs; refused, logged and cleaned up (only inside vmsilod's own directories)
when they are forged, missing or point elsewhere. Signals go to the VMM the records identify
and to nothing else."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.support.fake_core import (
    ROOT,
    Core,
    RecordingHelper,
    SignalSpy,
    abandon,
    alive,
    runtime_files,
)
from vmsilo.daemon.runstate import Runstate
from vmsilo.daemon.vm import VmController
from vmsilo.host import proc
from vmsilo.host.procid import ProcessIdentity
from vmsilo.protocol.exec import ExecRequest, ExitStatus

# A hang is a failure with a traceback, not a stuck suite.
pytestmark = pytest.mark.timeout(60)


async def until(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def echo(vm: VmController, text: str) -> tuple[ExitStatus, bytes]:
    out = bytearray()

    async def sink(data: bytes) -> None:
        out.extend(data)

    status = await vm.exec_client().run(ExecRequest(argv=["echo", text], env={}), stdout=sink)
    return status, bytes(out)


async def left_running(core: Core) -> int:
    """A VM started by 'the previous vmsilod', which then died. Returns the VMM's pid."""
    first = core.vm()
    await first.start()
    return await abandon(first)


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated process that must never be signalled."""
    sleeper = proc.spawn(["sleep", "300"])
    yield sleeper
    sleeper.kill()
    sleeper.wait()


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> SignalSpy:
    return SignalSpy().install(monkeypatch)


# -- taken over -----------------------------------------------------------------------------------


async def test_a_restarted_vmsilod_adopts_the_running_vmm_and_stops_it(core: Core) -> None:
    core.helpers = [RecordingHelper(core.events)]
    pid = await left_running(core)
    second = core.restarted()
    assert await second.readopt(core.runtime_dir())
    assert second.state is Runstate.RUNNING
    assert second.vmm is not None and second.vmm.pid == pid
    assert second.status_row()["pid"] == pid
    assert await echo(second, "still here") == (ExitStatus(code=0), b"still here\n")
    # Helpers never outlive vmsilod: the adopted VM gets new ones.
    assert core.events == ["helper start alpha", "helper start alpha"]
    assert await second.stop() == "guest powered off"
    assert not alive(pid)
    assert not core.runtime_dir().exists() and not core.overlay().exists()
    assert core.events[-1] == "helper stop alpha"
    assert core.canaries_intact() == []


async def test_the_supervisor_adopts_every_running_vm(core: Core) -> None:
    await left_running(core)
    beta = core.vm("beta")
    await beta.start()
    await abandon(beta)
    supervisor = core.supervisor()
    assert sorted(await supervisor.readopt_all(core.runtime_dir)) == ["alpha", "beta"]
    assert [row["state"] for row in supervisor.status()] == ["running", "running"]
    assert sorted(await supervisor.stop_all()) == ["alpha: guest powered off",
                                                   "beta: guest powered off"]


async def test_an_adopted_vmm_that_crashes_is_noticed_and_cleaned_up(core: Core) -> None:
    pid = await left_running(core)
    second = core.restarted()
    assert await second.readopt(core.runtime_dir())
    os.kill(pid, signal.SIGKILL)
    await until(lambda: second.state is Runstate.FAILED)
    # Not our child: its exit status is unknown.
    assert second.reason == "the VMM exited unexpectedly (killed or crashed)"
    assert not core.runtime_dir().exists() and not core.overlay().exists()


async def test_a_vmm_that_ended_while_vmsilod_was_down_is_cleaned_up(core: Core) -> None:
    pid = await left_running(core)
    os.kill(pid, signal.SIGKILL)
    core.backend.processes[0].wait()
    second = core.restarted()
    assert not await second.readopt(core.runtime_dir())
    assert second.state is Runstate.FAILED
    assert second.reason == "the VMM exited while vmsilod was not running"
    assert not core.runtime_dir().exists() and not core.overlay().exists()
    assert (core.paths.vm_log_dir("alpha") / "console.log").exists()


# -- refused ------------------------------------------------------------------------------------


async def refused(core: Core, caplog: pytest.LogCaptureFixture, reason: str) -> VmController:
    second = core.restarted()
    with caplog.at_level(logging.WARNING, logger="vmsilo.daemon.vm"):
        assert not await second.readopt(core.runtime_dir())
    assert reason in caplog.text, caplog.text
    assert second.state is not Runstate.RUNNING and second.vmm is None
    assert core.canaries_intact() == []
    return second


async def test_no_launch_spec_kills_the_identified_vmm_and_cleans_up(
        core: Core, caplog: pytest.LogCaptureFixture, spy: SignalSpy) -> None:
    pid = await left_running(core)
    (core.runtime_dir() / "launch.json").unlink()
    await refused(core, caplog, "cannot re-adopt (no launch spec)")
    assert f"killed its unmanageable process {pid}" in caplog.text
    assert set(spy.pids) == {pid}
    await until(lambda: not alive(pid))
    assert not core.runtime_dir().exists()


async def test_a_launch_spec_of_another_vm_is_refused(
        core: Core, caplog: pytest.LogCaptureFixture, spy: SignalSpy) -> None:
    pid = await left_running(core)
    spec = core.saved("alpha", "launch.json")
    core.write_saved("alpha", "launch.json", spec | {"name": "beta"})
    await refused(core, caplog, "names another VM's places")
    assert set(spy.pids) == {pid}
    assert not core.runtime_dir().exists()


@pytest.mark.parametrize("field", ["runtime_dir", "log_dir", "overlay"])
async def test_a_launch_spec_naming_other_places_is_refused_and_they_are_untouched(
        core: Core, caplog: pytest.LogCaptureFixture, spy: SignalSpy, field: str) -> None:
    pid = await left_running(core)
    spec = core.saved("alpha", "launch.json")
    target = core.outside / "overlay-target"
    if field == "overlay":
        spec["overlay_disk"]["path"] = str(target)
    else:
        spec[field] = str(core.canary_dir)
    core.write_saved("alpha", "launch.json", spec)
    await refused(core, caplog, "names another VM's places")
    assert set(spy.pids) == {pid}
    assert target.exists() and core.canary_dir.is_dir()


async def test_a_link_planted_as_the_launch_spec_is_not_followed(
        core: Core, caplog: pytest.LogCaptureFixture, spy: SignalSpy) -> None:
    pid = await left_running(core)
    canary = core.canaries[0].path
    launch = core.runtime_dir() / "launch.json"
    launch.unlink()
    launch.symlink_to(canary)
    await refused(core, caplog, "its launch spec is unreadable")
    assert set(spy.pids) == {pid}
    assert canary.exists() and not core.runtime_dir().exists()


async def test_a_record_naming_an_unrelated_process_signals_nothing(
        core: Core, caplog: pytest.LogCaptureFixture, spy: SignalSpy,
        bystander: subprocess.Popen[bytes]) -> None:
    """The bystander's pid with another start time (a reused pid): it is not the VMM, so the
    VMM counts as gone; nothing is signalled, and only vmsilod's directories are cleaned."""
    await left_running(core)
    identity = ProcessIdentity.of(bystander.pid)
    assert identity is not None
    for forged in ({"pid": bystander.pid, "start": identity.start + 1, "exe": identity.exe},
                   {"pid": os.getpid(), "start": 1, "exe": "/usr/bin/python3"},
                   {"pid": bystander.pid, "start": identity.start, "exe": "/usr/bin/qemu"}):
        core.write_saved("alpha", "processes.json", {"vmm": forged, "monitor": forged})
        second = core.restarted()
        with caplog.at_level(logging.WARNING, logger="vmsilo.daemon.vm"):
            assert not await second.readopt(core.runtime_dir())
        assert "its VMM is gone" in caplog.text
        assert spy.pids == [] and bystander.poll() is None
        assert not core.runtime_dir().exists() and not core.overlay().exists()
        assert core.canaries_intact() == []
        # Put the state back for the next forgery (the VMM of the first start still runs).
        resurrect(core)


def resurrect(core: Core) -> None:
    """Recreate the runtime dir with its spec, as the previous start left it."""
    from vmsilo.daemon import resources

    spec = core.plan(core.load().vms["alpha"])
    resources.acquire_runtime_dir(spec).close()
    resources.acquire_overlay(spec)


async def test_an_unreadable_process_record_is_refused_and_signals_nothing(
        core: Core, caplog: pytest.LogCaptureFixture, spy: SignalSpy) -> None:
    """Without a record to identify it, the VMM cannot be stopped safely: it is left alone
    (logged) rather than guessed at."""
    pid = await left_running(core)
    core.write_saved("alpha", "processes.json", "{not json")
    await refused(core, caplog, "its process record is unreadable")
    assert spy.pids == [] and alive(pid)
    assert not core.runtime_dir().exists()


@pytest.mark.parametrize("record", [
    [1, 2, 3],
    {"vmm": {"pid": "1", "start": 1, "exe": "/x"}},
    {"vmm": {"pid": 1, "start": 1, "exe": "/sbin/init"}},
    {"vmm": {"pid": True, "start": 1, "exe": "/x"}},
    {"vmm": {"pid": 4242, "start": 1, "exe": "relative"}},
    {"vmm": {"pid": 4242, "start": 1, "exe": "/x", "argv": "qemu"}},
], ids=["list", "pid-string", "pid-1", "pid-bool", "relative-exe", "extra-key"])
async def test_malformed_process_records_are_refused(
        core: Core, caplog: pytest.LogCaptureFixture, spy: SignalSpy,
        record: object) -> None:
    pid = await left_running(core)
    core.write_saved("alpha", "processes.json", json.dumps(record))
    await refused(core, caplog, "its process record is malformed")
    assert spy.pids == [] and alive(pid)


async def test_a_missing_process_record_is_refused(
        core: Core, caplog: pytest.LogCaptureFixture, spy: SignalSpy) -> None:
    pid = await left_running(core)
    (core.runtime_dir() / "processes.json").unlink()
    await refused(core, caplog, "no record of its VMM")
    assert spy.pids == [] and alive(pid)
    assert not core.runtime_dir().exists()


@pytest.mark.skipif(not ROOT, reason="chown needs root")
async def test_a_runtime_dir_of_another_owner_is_left_alone(
        core: Core, caplog: pytest.LogCaptureFixture, spy: SignalSpy,
        bystander: subprocess.Popen[bytes]) -> None:
    pid = await left_running(core)
    runtime = core.runtime_dir()
    before = runtime_files(core)
    os.chown(runtime, 65534, 65534)
    second = core.restarted()
    with caplog.at_level(logging.ERROR, logger="vmsilo.daemon.vm"):
        assert not await second.readopt(runtime)
    assert "not re-adopting" in caplog.text and "belongs to uid 65534" in caplog.text
    assert second.state is Runstate.STOPPED
    assert runtime_files(core) == before and os.stat(runtime).st_uid == 65534
    assert spy.pids == [] and alive(pid) and bystander.poll() is None
    assert core.canaries_intact() == []


async def test_a_runtime_dir_that_is_a_link_is_not_followed(
        core: Core, caplog: pytest.LogCaptureFixture, spy: SignalSpy) -> None:
    core.paths.run_dir.mkdir(parents=True, mode=0o755)
    core.runtime_dir().symlink_to(core.canary_dir)
    second = core.restarted()
    with caplog.at_level(logging.ERROR, logger="vmsilo.daemon.vm"):
        assert not await second.readopt(core.runtime_dir())
    assert "symbolic link" in caplog.text
    assert spy.pids == [] and core.canaries_intact() == []
