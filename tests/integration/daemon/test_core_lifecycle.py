"""One VM's lifecycle through the real ``VmController`` over the fake VMM backend: what a
start leaves in vmsilod's root-owned directories, the three ways a stop ends, a failure in
each stage rolling back everything before it, concurrent starts, a start abandoned when
vmsilod exits, and the VMM ending on its own. No VM boots: the fake VMM is a process serving
the real guest agent on the channel socket."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import os
import signal
import stat
import time
from pathlib import Path

import pytest

from tests.support.fake_core import (
    ROOT,
    Core,
    RecordingHelper,
    SignalSpy,
    alive,
    runtime_files,
)
from vmsilo.daemon.runstate import Runstate
from vmsilo.daemon.vm import VmController
from vmsilo.errors import UserError
from vmsilo.host.procid import ProcessIdentity
from vmsilo.hypervisor.spec import FsShare, LaunchSpec, spec_from_json
from vmsilo.protocol.exec import ExecRequest, ExitStatus
from vmsilo.testing.fake_vmm import Faults

# A hang is a failure with a traceback, not a stuck suite.
pytestmark = pytest.mark.timeout(60)


async def run(vm: VmController, *argv: str) -> tuple[ExitStatus, bytes]:
    out = bytearray()

    async def sink(data: bytes) -> None:
        out.extend(data)

    status = await vm.exec_client().run(ExecRequest(argv=list(argv), env={}), stdout=sink)
    return status, bytes(out)


async def until(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def assert_rolled_back(core: Core, name: str = "alpha") -> None:
    assert not core.runtime_dir(name).exists()
    assert not core.overlay(name).exists()
    for popen in core.backend.processes:
        assert popen.poll() is not None, f"fake VMM {popen.pid} still runs"
    assert core.canaries_intact() == []


def mode_of(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_uid, stat.S_IMODE(st.st_mode)


# -- start and stop ------------------------------------------------------------------------------


async def test_start_leaves_root_owned_state_and_a_working_agent_then_stop_powers_off(
        core: Core) -> None:
    core.log_group = 65534 if ROOT else None
    vm = core.vm()
    await vm.start()
    assert vm.state is Runstate.RUNNING
    uid = os.geteuid()
    runtime = core.runtime_dir()
    assert mode_of(runtime) == (uid, 0o700)
    assert {"launch.json", "processes.json", "cid", "vmm.sock", "channel.sock",
            "console.sock"} <= set(runtime_files(core))
    assert mode_of(runtime / "launch.json") == (uid, 0o600)
    assert mode_of(runtime / "processes.json") == (uid, 0o600)
    assert spec_from_json(core.saved("alpha", "launch.json")) == vm.spec
    assert vm.vmm is not None
    record = core.saved("alpha", "processes.json")
    vmm = ProcessIdentity.from_json(record["vmm"])
    assert vmm.pid == vm.vmm.pid and vmm.alive()
    assert mode_of(core.overlay()) == (uid, 0o600)
    assert os.stat(core.overlay()).st_size == 64 << 20
    logs = core.paths.vm_log_dir("alpha")
    assert mode_of(logs) == (uid, 0o750)
    # The console reaches its log through the log pump, a moment after the VMM wrote it.
    for _ in range(100):
        if b"booting" in (logs / "console.log").read_bytes():
            break
        await asyncio.sleep(0.05)
    assert b"booting" in (logs / "console.log").read_bytes()
    if ROOT:
        assert os.stat(logs).st_gid == 65534 and os.stat(logs / "vmm.log").st_gid == 65534
    assert core.backend.jails == {"alpha": ("jail", "alpha")}
    row = vm.status_row()
    assert (row["state"], row["pid"], row["memory"]) == ("running", vm.vmm.pid, 1024)

    assert await run(vm, "echo", "hello from the fake guest") == (
        ExitStatus(code=0), b"hello from the fake guest\n")

    pid = vm.vmm.pid
    assert await vm.stop() == "guest powered off"
    assert vm.state is Runstate.STOPPED and vm.vmm is None and vm.transport is None
    assert not alive(pid)
    assert core.backend.processes[0].returncode == 0
    assert_rolled_back(core)
    assert (logs / "console.log").exists()  # logs outlive the VM


async def test_stop_waits_for_a_guest_that_takes_its_time_to_power_off(core: Core) -> None:
    core.backend.default = Faults(poweroff_delay=0.4)
    vm = core.vm()
    await vm.start()
    began = time.monotonic()
    assert await vm.stop() == "guest powered off"
    assert time.monotonic() - began >= 0.4
    assert_rolled_back(core)


async def test_stop_quits_the_vmm_when_the_guest_ignores_poweroff(core: Core) -> None:
    core.timeouts = dataclasses.replace(core.timeouts, agent_poweroff=0.3, vmm_powerdown=0.3)
    core.backend.default = Faults(ignore_poweroff=True)
    vm = core.vm()
    await vm.start()
    assert await vm.stop() == "VMM quit"
    assert vm.state is Runstate.STOPPED
    assert core.backend.processes[0].returncode == 0
    assert_rolled_back(core)


async def test_stop_kills_a_vmm_that_ignores_quit_too(core: Core,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    core.timeouts = dataclasses.replace(core.timeouts, agent_poweroff=0.3, vmm_powerdown=0.3,
                                        vmm_quit=0.3)
    core.backend.default = Faults(ignore_poweroff=True, ignore_quit=True)
    vm = core.vm()
    await vm.start()
    assert vm.vmm is not None
    pid = vm.vmm.pid
    spy = SignalSpy().install(monkeypatch)
    assert await vm.stop() == "VMM killed"
    assert spy.sent == [("pidfd", pid, signal.SIGKILL)]  # through the pidfd, never by number
    assert vm.state is Runstate.STOPPED
    assert core.backend.processes[0].returncode == -signal.SIGKILL
    assert_rolled_back(core)


async def test_stop_of_a_stopped_vm_and_a_second_start(core: Core) -> None:
    vm = core.vm()
    assert await vm.stop() == "already stopped"
    await vm.start()
    await vm.start()  # running: nothing to do
    assert await vm.stop() == "guest powered off"
    await vm.start()
    assert core.backend.launches == ["alpha", "alpha"]
    assert (await run(vm, "true"))[0] == ExitStatus(code=0)
    await vm.stop()
    assert_rolled_back(core)


# -- a failure in each stage rolls back what came before ---------------------------------------


def with_share(spec: LaunchSpec) -> LaunchSpec:
    return dataclasses.replace(spec, shares=(FsShare("home", spec.layout.runtime_dir / "fs"),))


class Shares:
    """Stands in for ShareService (the real one runs virtiofsd on real folders)."""

    def __init__(self, fail: str | None = None) -> None:
        self.fail = fail
        self.started: list[str] = []

    def start_all(self, rvm: object, spec: LaunchSpec, runtime: object,
                  open_log: object) -> list[object]:
        if self.fail:
            raise UserError(self.fail)
        self.started.append(spec.name)
        return []


async def fails_at(vm: VmController, stage: str) -> str:
    with pytest.raises(UserError, match=f"VM alpha failed to start: {stage}: ") as info:
        await vm.start()
    assert vm.state is Runstate.FAILED
    assert vm.vmm is None and vm.transport is None
    return str(info.value)


async def test_plan_failure_touches_nothing(core: Core) -> None:
    def broken(spec: LaunchSpec) -> LaunchSpec:
        raise UserError("VM alpha: its image is not built; build it with: vmsilo image build")

    core.plan_hook = broken
    vm = core.vm()
    assert "image is not built" in await fails_at(vm, "plan")
    assert not core.paths.run_dir.exists() and not core.paths.state_dir.exists()
    assert core.backend.launches == []


async def test_runtime_dir_failure_on_a_planted_link(core: Core) -> None:
    core.paths.run_dir.symlink_to(core.canary_dir)
    vm = core.vm()
    assert "symbolic link" in await fails_at(vm, "runtime directory")
    assert core.backend.launches == [] and not core.overlay().exists()
    assert core.canaries_intact() == []


async def test_network_failure_removes_the_runtime_dir(core: Core) -> None:
    def network(rvm: object) -> object:
        raise UserError("vms.alpha.network: bridge br9 does not exist; create it first")

    core.network = network
    vm = core.vm()
    assert "bridge br9" in await fails_at(vm, "network")
    assert_rolled_back(core)
    assert core.backend.launches == []


async def test_overlay_failure_on_a_planted_state_link(core: Core) -> None:
    core.paths.state_dir.symlink_to(core.canary_dir)
    vm = core.vm()
    assert "symbolic link" in await fails_at(vm, "root overlay")
    assert not core.runtime_dir().exists()
    assert core.backend.launches == []
    assert core.canaries_intact() == []


async def test_a_link_planted_as_the_vm_state_dir_is_replaced_not_followed(core: Core) -> None:
    core.paths.state_dir.mkdir(mode=0o700)
    core.paths.vm_state_dir("alpha").symlink_to(core.canary_dir)
    vm = core.vm()
    await vm.start()
    assert not core.paths.vm_state_dir("alpha").is_symlink()
    assert core.overlay().is_file()
    assert core.canaries_intact() == []
    await vm.stop()
    assert_rolled_back(core)


async def test_shares_failure_removes_overlay_and_runtime_dir(core: Core) -> None:
    core.plan_hook = with_share
    core.shares = Shares(fail="sharedHome: /home/alice is missing; create it")
    vm = core.vm()
    assert "/home/alice is missing" in await fails_at(vm, "shared folders")
    assert_rolled_back(core)
    assert core.backend.launches == []


async def test_vmm_exiting_at_start_names_its_log_and_rolls_back(core: Core) -> None:
    core.plan_hook = with_share
    core.shares = Shares()
    core.backend.default = Faults(exit_at_start=3)
    vm = core.vm()
    message = await fails_at(vm, "VMM")
    vmm_log = core.paths.vm_log_dir("alpha") / "vmm.log"
    assert "exited at start with status 3" in message and str(vmm_log) in message
    assert "fault injected" in message  # the log's tail comes along
    assert vm.log_path == vmm_log
    assert vm.status_row()["log"] == str(vmm_log)
    assert core.shares.started == ["alpha"]
    assert_rolled_back(core)


async def test_vmm_never_answering_its_control_socket_times_out_and_is_killed(
        core: Core) -> None:
    core.timeouts = dataclasses.replace(core.timeouts, vmm_start=0.8)
    core.backend.default = Faults(slow_start=30)
    vm = core.vm()
    assert "did not finish within 0.8 s" in await fails_at(vm, "VMM")
    assert_rolled_back(core)


async def test_agent_never_saying_hello_stops_the_vmm(core: Core) -> None:
    core.timeouts = dataclasses.replace(core.timeouts, agent_hello=1.0)
    core.backend.default = Faults(no_hello=True)
    vm = core.vm()
    message = await fails_at(vm, "agent")
    assert "hello" in message
    assert vm.log_path == core.paths.vm_log_dir("alpha") / "console.log"
    assert_rolled_back(core)


async def test_vmm_crashing_during_boot(core: Core) -> None:
    core.backend.default = Faults(no_hello=True, crash_after=0.3, crash_status=7)
    vm = core.vm()
    assert "the VMM exited during boot (status 7)" in await fails_at(vm, "agent")
    assert_rolled_back(core)


async def test_helper_failure_stops_the_vmm_and_the_helpers_already_started(
        core: Core) -> None:
    first, second = RecordingHelper(core.events, "dbus"), RecordingHelper(core.events, "wayland")
    second.fail = "no compositor socket"
    core.helpers = [first, second]
    vm = core.vm()
    assert "no compositor socket" in await fails_at(vm, "desktop helpers")
    assert_rolled_back(core)
    # The one that failed is stopped too: it may have started something before failing.
    assert core.events == ["dbus start alpha", "wayland stop alpha", "dbus stop alpha"]


async def test_a_failed_start_can_be_retried_and_cleared(core: Core) -> None:
    core.backend.default = Faults(exit_at_start=1)
    vm = core.vm()
    await fails_at(vm, "VMM")
    assert await vm.stop() == "cleared the failure"
    assert vm.state is Runstate.STOPPED and vm.status_row()["reason"] is None
    await fails_at(vm, "VMM")
    core.backend.default = Faults()
    await vm.start()
    assert vm.state is Runstate.RUNNING
    await vm.stop()
    assert_rolled_back(core)


# -- concurrency and abandoned starts ----------------------------------------------------------


async def test_concurrent_starts_share_one_start(core: Core) -> None:
    core.backend.default = Faults(boot_delay=0.4)
    vm = core.vm()
    await asyncio.gather(*(vm.start() for _ in range(5)))
    assert vm.state is Runstate.RUNNING
    assert core.backend.launches == ["alpha"]
    await vm.stop()


async def test_concurrent_starts_share_one_failure(core: Core) -> None:
    core.backend.default = Faults(exit_at_start=2)
    vm = core.vm()
    results = await asyncio.gather(*(vm.start() for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, UserError) and "status 2" in str(r) for r in results)
    assert core.backend.launches == ["alpha"]
    assert_rolled_back(core)


async def test_stop_during_start_waits_for_it_then_stops(core: Core) -> None:
    core.backend.default = Faults(boot_delay=0.4)
    vm = core.vm()
    start = asyncio.create_task(vm.start())
    await until(lambda: core.backend.launches)
    assert await vm.stop() == "guest powered off"
    await start
    assert vm.state is Runstate.STOPPED
    assert_rolled_back(core)


@pytest.mark.parametrize("faults", [Faults(slow_start=30), Faults(no_hello=True)],
                         ids=["in the VMM stage", "in the agent stage"])
async def test_vmsilod_exiting_mid_start_leaves_nothing_running(core: Core,
                                                                faults: Faults) -> None:
    core.backend.default = faults
    vm = core.vm()
    start = asyncio.create_task(vm.start())
    await until(lambda: core.backend.launches)
    await asyncio.sleep(0.3)
    await vm.abandon_start()
    await asyncio.wait([start], timeout=5)
    assert start.cancelled()
    assert_rolled_back(core)


# -- the VMM ending on its own ----------------------------------------------------------------


async def test_guest_powering_off_itself_is_a_clean_stop(core: Core) -> None:
    helper = RecordingHelper(core.events)
    core.helpers = [helper]
    vm = core.vm()
    await vm.start()
    await vm.exec_client().poweroff()
    await until(lambda: vm.state is Runstate.STOPPED)
    assert vm.reason is None
    assert core.events == ["helper start alpha", "helper stop alpha"]
    assert_rolled_back(core)


async def test_vmm_crash_is_a_failure_naming_the_status_and_the_console_log(core: Core) -> None:
    core.backend.default = Faults(crash_after=0.5, crash_status=3)
    vm = core.vm()
    await vm.start()
    await until(lambda: vm.state is Runstate.FAILED)
    assert vm.reason == "the VMM exited unexpectedly (status 3)"
    assert vm.log_path == core.paths.vm_log_dir("alpha") / "console.log"
    assert_rolled_back(core)
    assert await vm.stop() == "cleared the failure"


async def test_vmm_killed_from_outside_is_a_failure(core: Core) -> None:
    vm = core.vm()
    await vm.start()
    assert vm.vmm is not None
    os.kill(vm.vmm.pid, signal.SIGKILL)
    await until(lambda: vm.state is Runstate.FAILED)
    assert vm.reason == f"the VMM exited unexpectedly (status {-signal.SIGKILL})"
    assert_rolled_back(core)


async def test_stop_closes_the_vmm_pidfd_once(core: Core) -> None:
    """Once the VMM's pidfd is closed its number is free, and the next descriptor anyone
    opens may get it: a second close would close that one (another VM's socket, a client's
    connection)."""
    vm = core.vm()
    await vm.start()
    assert vm.vmm is not None
    number = vm.vmm._pidfd
    stand_in = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    taken = asyncio.Event()

    async def take_the_number() -> None:
        while True:
            try:
                fcntl.fcntl(number, fcntl.F_GETFD)
            except OSError:
                os.dup2(stand_in, number)  # what the next open would do
                taken.set()
                return
            await asyncio.sleep(0)

    taker = asyncio.create_task(take_the_number())
    try:
        await vm.stop()
        assert taken.is_set()
        fcntl.fcntl(number, fcntl.F_GETFD)  # EBADF: the stop closed it a second time
    finally:
        taker.cancel()
        os.close(stand_in)
        with contextlib.suppress(OSError):
            os.close(number)

