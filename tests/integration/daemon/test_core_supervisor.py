"""The ``Supervisor`` over real controllers and the fake VMM: one start for concurrent
requests, dependencies first, autoShutdown of an idle VM (and not of a busy one), autoStart,
on-demand starts by ``open_port``, and what ``reload`` does to stopped, running, new and
removed VMs."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.support.fake_core import CONFIG, Core
from vmsilo.channel.exec_client import hello
from vmsilo.daemon.runstate import Runstate
from vmsilo.daemon.supervisor import Supervisor
from vmsilo.errors import UserError
from vmsilo.protocol.exec import EXEC_PORT, PROTOCOL_VERSION, ExecRequest, ExitStatus
from vmsilo.testing.fake_vmm import Faults

# A hang is a failure with a traceback, not a stuck suite.
pytestmark = pytest.mark.timeout(60)

VM = 'sharedHome = false\ngpu = false\nrootOverlay.size = "64M"\n'


def config(**vms: str) -> str:
    """A config with these VMs, each with the fake-friendly settings plus its own lines."""
    text = 'enable = true\nuser = "root"\n'
    for name, extra in vms.items():
        text += f"\n[vms.{name}]\n{VM}{extra}\n"
    return text


async def until(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def states(supervisor: Supervisor) -> dict[str, str]:
    return {row["name"]: row["state"] for row in supervisor.status()}


# -- starting ---------------------------------------------------------------------------------


async def test_concurrent_requests_start_the_vm_once(core: Core) -> None:
    core.backend.default = Faults(boot_delay=0.3)
    supervisor = core.supervisor()
    streams = await asyncio.gather(
        supervisor.start("alpha"), supervisor.start("alpha"),
        supervisor.open_port("alpha", EXEC_PORT, True, 10),
        supervisor.open_port("alpha", EXEC_PORT, True, 10))
    assert core.backend.launches == ["alpha"]
    for stream in streams[2:]:
        assert (await hello(stream, "alpha")).protocol == PROTOCOL_VERSION
        await stream.close()
    await supervisor.stop_all()


async def test_open_port_starts_on_demand_or_says_how(core: Core) -> None:
    supervisor = core.supervisor()
    with pytest.raises(UserError, match="VM alpha is stopped; start it with: vm-start alpha"):
        await supervisor.open_port("alpha", EXEC_PORT, False, 5)
    assert core.backend.launches == []
    stream = await supervisor.open_port("alpha", EXEC_PORT, True, 10)
    assert (await hello(stream, "alpha")).protocol == PROTOCOL_VERSION
    await stream.close()
    with pytest.raises(UserError, match="unknown VM 'gamma'; the configured VMs are: alpha, "
                                        "beta"):
        await supervisor.open_port("gamma", EXEC_PORT, True, 5)
    await supervisor.stop_all()


async def test_dependencies_start_first_and_a_failing_one_stops_the_chain(core: Core) -> None:
    core.write_config(config(app='dependsOn = ["db"]', db='dependsOn = ["base"]', base="",
                             other=""))
    supervisor = core.supervisor()
    await supervisor.start("app")
    assert core.backend.launches == ["base", "db", "app"]
    assert states(supervisor) == {"app": "running", "base": "running", "db": "running",
                                  "other": "stopped"}
    await supervisor.stop_all()

    core.backend.launches.clear()
    core.backend.faults["db"] = Faults(exit_at_start=4)
    with pytest.raises(UserError, match="VM db failed to start"):
        await supervisor.start("app")
    assert core.backend.launches == ["base", "db"]
    assert states(supervisor)["app"] == "stopped"
    await supervisor.stop_all()


async def test_autostart_starts_those_that_ask_and_logs_a_failure(
        core: Core, caplog: pytest.LogCaptureFixture) -> None:
    core.write_config(config(alpha="autoStart = true", beta="autoStart = true", gamma=""))
    core.backend.faults["beta"] = Faults(exit_at_start=5)
    supervisor = core.supervisor()
    await supervisor.autostart()
    assert states(supervisor) == {"alpha": "running", "beta": "failed", "gamma": "stopped"}
    assert "autoStart of beta failed" in caplog.text
    await supervisor.stop_all()


# -- autoShutdown -------------------------------------------------------------------------------


async def test_auto_shutdown_stops_an_idle_vm(core: Core) -> None:
    core.write_config(config(alpha="autoShutdown = { enable = true, after = 1 }"))
    supervisor = core.supervisor()
    await supervisor.start("alpha")
    started = time.monotonic()
    await until(lambda: states(supervisor)["alpha"] == "stopped", timeout=10)
    assert time.monotonic() - started >= 1
    assert core.backend.processes[0].returncode == 0  # powered off through the agent
    assert not core.runtime_dir().exists()


async def test_auto_shutdown_waits_for_a_running_command(core: Core) -> None:
    core.write_config(config(alpha="autoShutdown = { enable = true, after = 1 }"))
    supervisor = core.supervisor()
    await supervisor.start("alpha")
    vm = supervisor.controller("alpha")
    session = await vm.exec_client().start(ExecRequest(argv=["sleep", "2.5"], env={}))
    await asyncio.sleep(2.2)
    assert vm.state is Runstate.RUNNING  # idle for "after" would have stopped it by now
    assert await session.pump() == ExitStatus(code=0)
    await session.close()
    await until(lambda: vm.state is Runstate.STOPPED, timeout=10)


async def test_auto_shutdown_still_works_after_the_guest_powered_off_itself(
        core: Core) -> None:
    core.write_config(config(alpha="autoShutdown = { enable = true, after = 1 }"))
    supervisor = core.supervisor()
    await supervisor.start("alpha")
    vm = supervisor.controller("alpha")
    await vm.exec_client().poweroff()  # from inside: not through the supervisor
    await until(lambda: vm.state is Runstate.STOPPED)
    await asyncio.sleep(0.7)  # the idle watch notices and ends
    await supervisor.start("alpha")
    await until(lambda: vm.state is Runstate.STOPPED, timeout=6)


# -- reload -------------------------------------------------------------------------------------


async def test_reload_applies_to_stopped_vms_now_and_to_running_ones_at_restart(
        core: Core) -> None:
    supervisor = core.supervisor()
    await supervisor.start("alpha")
    core.write_config(CONFIG.replace('[vms.alpha]\n', '[vms.alpha]\nmemory = 2048\n')
                      .replace('[vms.beta]\n', '[vms.beta]\nmemory = 512\n'))
    assert await supervisor.reload() == ["alpha"]
    rows = {row["name"]: row for row in supervisor.status()}
    assert (rows["alpha"]["memory"], rows["alpha"]["pending"]) == (1024, True)
    assert (rows["beta"]["memory"], rows["beta"]["pending"]) == (512, False)
    await supervisor.stop("alpha")
    await supervisor.start("alpha")
    rows = {row["name"]: row for row in supervisor.status()}
    assert (rows["alpha"]["memory"], rows["alpha"]["pending"]) == (2048, False)
    # An unchanged config changes nothing.
    assert await supervisor.reload() == []
    await supervisor.stop_all()


async def test_reload_adds_and_removes_vms(core: Core) -> None:
    supervisor = core.supervisor()
    await supervisor.start("alpha")
    core.write_config(config(gamma=""))
    assert await supervisor.reload() == ["alpha"]
    assert states(supervisor) == {"alpha": "running", "gamma": "stopped"}  # beta: gone
    with pytest.raises(UserError, match="unknown VM 'beta'"):
        await supervisor.start("beta")
    # A removed VM that still runs can be stopped by name, and then it is gone.
    assert await supervisor.stop("alpha") == "guest powered off"
    assert states(supervisor) == {"gamma": "stopped"}


async def test_a_broken_config_leaves_everything_as_it_was(core: Core) -> None:
    supervisor = core.supervisor()
    core.write_config("enable = true\nuser = 'root'\n[vms.alpha]\nmemory = 'lots'\n")
    with pytest.raises(UserError, match="memory"):
        await supervisor.reload()
    assert states(supervisor) == {"alpha": "stopped", "beta": "stopped"}
    await supervisor.start("alpha")
    assert supervisor.status()[0]["memory"] == 1024
    await supervisor.stop_all()
