"""One VM as vmsilod sees it: its state, its start and stop, its VMM and its guest channel.

What a running VM holds is one list of resources (``VmController.resources``: runtime
directory, network, root overlay, shared folders, VMM, agent channel, desktop helpers), in
start order. A start acquires them in order through one rollback guard, each stage bounded;
concurrent start requests share a single start. A VM whose VMM outlived an earlier vmsilod is
re-adopted by asking each resource of the same list to take over what its start left in the
root-owned runtime directory. Stop releases them in reverse, for both. Once running, a watcher
notices the VMM ending on its own (crash, kill, guest power-off) and cleans up. Stop asks the
agent, then the VMM, then kills — each step bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from vmsilo.channel.exec_client import ExecClient
from vmsilo.channel.stream import ChannelError, Stream
from vmsilo.channel.transports import SerialMuxTransport, Transport
from vmsilo.config import ResolvedVm
from vmsilo.daemon import resources
from vmsilo.daemon.runstate import Runstate, StateError, check_transition, require
from vmsilo.daemon.stages import StageError, Stages, Undo, rollback_on_failure
from vmsilo.errors import UserError
from vmsilo.host import logpump
from vmsilo.host.procid import ProcessIdentity, executable, kill_if_alive, start_time
from vmsilo.host.safefs import Dir
from vmsilo.hypervisor.base import Backend, VmmLaunchError, VmmProcess
from vmsilo.hypervisor.spec import LaunchSpec, spec_from_json
from vmsilo.network.apply import apply_plan, remove_plan
from vmsilo.network.plan import NetworkPlan, plan_from_json, plan_to_json
from vmsilo.shares.runner import RunningShare
from vmsilo.shares.service import ShareService

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timeouts:
    """Bounds of each stage, in seconds. Boot is generous: under software emulation a Debian
    guest needs 15-30 s to reach its agent."""

    vmm_start: float = 40.0
    agent_hello: float = 180.0
    agent_poweroff: float = 30.0
    vmm_powerdown: float = 5.0  # the power button, after an agent poweroff that did not end it
    vmm_quit: float = 10.0
    cleanup: float = 30.0


# (resolved VM) -> launch spec, or a UserError saying what is missing (e.g. the image)
PlanFn = Callable[[ResolvedVm], LaunchSpec]
# (resolved VM) -> what the host builds for its network (TAPs, bridges, nftables tables)
NetworkFn = Callable[[ResolvedVm], NetworkPlan]
# (resolved VM) -> whom its VMM runs as (the backend's jail settings)
JailFn = Callable[[ResolvedVm], Any]
# (VMM pid, resolved VM) -> called once the VMM runs (core scheduling)
AfterLaunchFn = Callable[[int, ResolvedVm], None]

NETWORK_RECORD = "network.json"  # in the runtime dir: the plan that was applied
CONSOLE_LOG = "console.log"
VMM_LOG = "vmm.log"


class Helper(Protocol):
    """A host half of guest services (Wayland path, D-Bus proxy): up while the VM runs."""

    def start(self, rvm: ResolvedVm) -> None: ...

    def stop(self, name: str) -> None: ...


@dataclass(frozen=True)
class Resource:
    """One thing a running VM holds. ``acquire`` makes it at start; ``adopt`` takes over what
    an earlier vmsilod made (from the runtime directory); both return its release."""

    name: str
    timeout: float
    acquire: Callable[[LaunchSpec], Awaitable[Undo | None]]
    adopt: Callable[[LaunchSpec], Awaitable[Undo | None]]
    on_timeout: str | None = None  # what a timeout of its start means, for the user


class AdoptionRefused(Exception):  # noqa: N818 - the condition, not a bug
    """What an earlier vmsilod left cannot be trusted or used; the reason is logged."""


class VmController:
    def __init__(
        self,
        resolved: ResolvedVm,
        backend: Backend,
        plan: PlanFn,
        *,
        jail: JailFn,
        log_group: int | None = None,
        timeouts: Timeouts = Timeouts(),
        on_state: Callable[[VmController], Awaitable[None]] | None = None,
        network: NetworkFn | None = None,
        shares: ShareService | None = None,
        helpers: Sequence[Helper] = (),
        after_launch: AfterLaunchFn | None = None,
        expected_paths: Callable[[str], ExpectedPaths] | None = None,
    ) -> None:
        self.name = resolved.name
        self.resolved = resolved  # the config the VM runs (or will run) with
        self.pending: ResolvedVm | None = None  # a reloaded config waiting for a restart
        self.backend = backend
        self.plan = plan
        self.jail = jail
        self.log_group = log_group  # the desktop user's group: may read the VM's logs
        self.timeouts = timeouts
        self.on_state = on_state
        self.network = network
        self.shares = shares
        self.helpers = tuple(helpers)
        self.after_launch = after_launch
        self.expected_paths = expected_paths
        self.state = Runstate.STOPPED
        self.reason: str | None = None
        self.log_path: Path | None = None
        self.started_at: float | None = None
        self.spec: LaunchSpec | None = None
        self.vmm: VmmProcess | None = None
        self.transport: Transport | None = None
        self.runtime: Dir | None = None  # the runtime directory, open while the VM runs
        self._stages: Stages | None = None
        self._start_task: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._stop_lock = asyncio.Lock()

    # -- state ------------------------------------------------------------------------------

    def _set_state(self, new: Runstate, reason: str | None = None,
                   log_path: Path | None = None) -> None:
        check_transition(self.name, self.state, new)
        self.state = new
        if new is Runstate.FAILED:
            self.reason, self.log_path = reason, log_path
            log.error("VM %s failed: %s%s", self.name, reason,
                      f" (see {log_path})" if log_path else "")
        elif new in (Runstate.STARTING, Runstate.STOPPED):
            self.reason, self.log_path = None, None
        log.info("VM %s: %s", self.name, new.value)
        if self.on_state is not None:
            task = asyncio.ensure_future(self.on_state(self))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    def status_row(self) -> dict[str, Any]:
        running = self.state is Runstate.RUNNING
        return {
            "name": self.name,
            "state": self.state.value,
            "uptime": round(time.time() - self.started_at, 1)
            if running and self.started_at else None,
            "cid": self.resolved.cid,
            "memory": (self.spec.memory_mb if self.spec and running else self.resolved.vm.memory),
            "pid": self.vmm.pid if self.vmm is not None and running else None,
            "reason": self.reason,
            "log": str(self.log_path) if self.log_path else None,
            "pending": self.pending is not None,
            "hypervisor": self.resolved.vm.hypervisor,
        }

    # -- the resources, in start order ------------------------------------------------------

    def resources(self) -> list[Resource]:
        t = self.timeouts
        return [
            Resource("runtime directory", 10, self._acquire_runtime, self._adopt_runtime),
            Resource("network", 60, self._acquire_network, self._adopt_network),
            Resource("root overlay", 30, self._acquire_overlay, self._adopt_overlay),
            Resource("shared folders", 120, self._acquire_shares, self._adopt_shares),
            Resource("VMM", t.vmm_start, self._launch, self._adopt_vmm),
            Resource("agent", t.agent_hello, self._wait_for_agent, self._adopt_agent,
                     f"the guest agent did not say hello within {t.agent_hello:g} s; the "
                     "kernel or init may have failed"),
            Resource("desktop helpers", 10, self._start_helpers, self._start_helpers),
        ]

    # -- start ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the VM, or join a start already under way. Returns when it runs."""
        if self.state is Runstate.RUNNING:
            return
        if self._start_task is None or self._start_task.done():
            if self.state is Runstate.STOPPING:
                raise StateError(f"VM {self.name} is stopping; try again when it has stopped")
            self._start_task = asyncio.create_task(self._start())
        await asyncio.shield(self._start_task)

    async def abandon_start(self) -> None:
        """vmsilod is exiting: a start under way is cancelled, which rolls it back (running
        VMs are left alone; the next vmsilod re-adopts them)."""
        task = self._start_task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def _start(self) -> None:
        if self.pending is not None:  # a stopped VM takes the reloaded config
            self.resolved, self.pending = self.pending, None
        self._set_state(Runstate.STARTING)
        stages = Stages(self.name)
        try:
            async with rollback_on_failure(stages):
                spec = await self._stage_plan(stages)
                for resource in self.resources():
                    await stages.run(resource.name, _bind(resource.acquire, spec),
                                     resource.timeout, resource.on_timeout)
        except StageError as exc:
            self.vmm = None
            self.transport = None
            self._set_state(Runstate.FAILED, str(exc), self._log_for(exc))
            raise UserError(f"VM {self.name} failed to start: {exc}"
                            + (f"; see {self.log_path}" if self.log_path else "")) from exc
        self._stages = stages
        self.started_at = time.time()
        self._set_state(Runstate.RUNNING)
        self._watcher = asyncio.create_task(self._watch())

    def _log_for(self, exc: StageError) -> Path | None:
        if self.spec is None or exc.stage not in ("VMM", "agent"):
            return None
        cause = exc.__cause__
        if isinstance(cause, VmmLaunchError):
            return cause.log
        return self.spec.layout.console_log

    async def _stage_plan(self, stages: Stages) -> LaunchSpec:
        async def plan() -> None:
            self.spec = self.plan(self.resolved)

        await stages.run("plan", plan, 10)
        assert self.spec is not None
        return self.spec

    # runtime directory (and the log directory beside it)

    def _undo_runtime(self, spec: LaunchSpec) -> Undo:
        async def undo() -> None:
            if self.runtime is not None:
                self.runtime.close()
                self.runtime = None
            resources.release_runtime_dir(spec)

        return undo

    async def _acquire_runtime(self, spec: LaunchSpec) -> Undo:
        self.runtime = resources.acquire_runtime_dir(spec)
        return self._undo_runtime(spec)

    async def _adopt_runtime(self, spec: LaunchSpec) -> Undo:
        return self._undo_runtime(spec)  # opened by readopt, which read the spec there

    # network

    def _undo_network(self, plan: NetworkPlan) -> Undo:
        async def undo() -> None:
            await asyncio.to_thread(remove_plan, plan)

        return undo

    async def _acquire_network(self, spec: LaunchSpec) -> Undo | None:
        plan = self.network(self.resolved) if self.network is not None else None
        if plan is None or not plan.taps:
            return None
        # Saved first: a daemon that dies half-way still finds what to remove.
        assert self.runtime is not None
        self.runtime.write_atomic(NETWORK_RECORD, json.dumps(plan_to_json(plan)))
        result = await asyncio.to_thread(apply_plan, plan)
        for tap in result.without_fq_codel:
            log.info("VM %s: TAP %s has no fq_codel (the kernel lacks it)", self.name, tap)
        return self._undo_network(plan)

    def _saved_network(self, runtime: Dir) -> NetworkPlan | None:
        """The applied plan an earlier start recorded, if it is this VM's own."""
        try:
            plan = plan_from_json(json.loads(runtime.read(NETWORK_RECORD)))
        except FileNotFoundError:
            return None
        except (OSError, UserError, ValueError, KeyError, TypeError) as exc:
            log.warning("VM %s: cannot use its network record (%s); nothing of it is removed",
                        self.name, exc)
            return None
        foreign = [tap.name for tap in plan.taps if tap.vm != self.name]
        if foreign:
            log.warning("VM %s: its network record names TAPs of other VMs (%s); it is "
                        "ignored", self.name, ", ".join(foreign))
            return None
        return plan

    async def _adopt_network(self, spec: LaunchSpec) -> Undo | None:
        assert self.runtime is not None
        plan = self._saved_network(self.runtime)
        return self._undo_network(plan) if plan is not None else None

    # root overlay

    def _undo_overlay(self, spec: LaunchSpec) -> Undo:
        async def undo() -> None:
            resources.release_overlay(spec)

        return undo

    async def _acquire_overlay(self, spec: LaunchSpec) -> Undo:
        resources.acquire_overlay(spec)
        return self._undo_overlay(spec)

    async def _adopt_overlay(self, spec: LaunchSpec) -> Undo:
        return self._undo_overlay(spec)

    # shared folders

    @staticmethod
    def _undo_shares(running: list[RunningShare]) -> Undo:
        async def undo() -> None:
            await asyncio.to_thread(ShareService.stop_all, running)

        return undo

    def _start_logs(self, names: list[str]) -> logpump.LogPump:
        """A capped log pump for ``names`` in the VM's root-owned log directory; the desktop
        user's group may read them."""
        assert self.spec is not None
        with resources.open_log_dir(self.spec, self.log_group) as logs:
            return logpump.start(logs, names, rotate_at_start=True,
                                 mode=resources.LOG_FILE_MODE, group=self.log_group)

    def _open_log(self, name: str) -> int:
        """A writable descriptor for a child's output to log ``name`` (the child's starter
        closes it once the child holds it)."""
        assert self.spec is not None
        return resources.pumped_log(self.spec.layout.log_dir, name, self.log_group)

    async def _acquire_shares(self, spec: LaunchSpec) -> Undo | None:
        if self.shares is None or not spec.shares:
            return None
        assert self.runtime is not None
        running = await asyncio.to_thread(self.shares.start_all, self.resolved, spec,
                                          self.runtime, self._open_log)
        return self._undo_shares(running)

    async def _adopt_shares(self, spec: LaunchSpec) -> Undo | None:
        if not spec.shares:
            return None
        assert self.runtime is not None
        return self._undo_shares(ShareService.adopt_all(spec, self.runtime))

    # VMM

    def _undo_vmm(self, spec: LaunchSpec, vmm: VmmProcess) -> Undo:
        async def undo() -> None:
            await self.backend.stop(spec, vmm, graceful=0, forced=self.timeouts.vmm_quit)
            vmm.close()

        return undo

    async def _launch(self, spec: LaunchSpec) -> Undo:
        assert self.runtime is not None
        runtime = self.runtime
        pump = await asyncio.to_thread(self._start_logs, [CONSOLE_LOG, VMM_LOG])

        def record(vmm: VmmProcess) -> None:
            # As soon as the VMM exists: a vmsilod that dies during the rest of the start
            # still knows it again (and can end it).
            identities = _process_record(vmm)
            if identities is not None:
                runtime.write_atomic(resources.PROCESSES_FILE, json.dumps(identities))

        try:
            self.vmm = await self.backend.launch(spec, runtime=runtime,
                                                 console_log=pump.fd(CONSOLE_LOG),
                                                 vmm_log=pump.fd(VMM_LOG),
                                                 jail=self.jail(self.resolved), on_spawn=record)
        finally:
            pump.close_write_ends()  # QEMU holds its own copies; the pump ends with them
        undo = self._undo_vmm(spec, self.vmm)
        if self.after_launch is not None:
            self.after_launch(self.vmm.pid, self.resolved)
        return undo

    async def _adopt_vmm(self, spec: LaunchSpec) -> Undo:
        assert self.vmm is not None  # found by readopt before the resources are adopted
        return self._undo_vmm(spec, self.vmm)

    # agent channel

    @staticmethod
    def _undo_transport(transport: Transport) -> Undo:
        async def undo() -> None:
            await transport.close()

        return undo

    async def _wait_for_agent(self, spec: LaunchSpec) -> Undo:
        transport = SerialMuxTransport(spec.layout.channel_socket, self.name)
        self.transport = transport
        undo = self._undo_transport(transport)

        assert self.vmm is not None
        client = ExecClient(transport, self.name, open_timeout=self.timeouts.agent_hello)
        hello = asyncio.create_task(client.hello())
        died = asyncio.create_task(self.vmm.wait())
        try:
            done, _ = await asyncio.wait({hello, died}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the stage's timeout, or vmsilod abandoning the start
            await undo()
            raise
        finally:
            for task in (hello, died):
                task.cancel()
        if hello in done and not hello.cancelled() and hello.exception() is None:
            log.info("VM %s: agent says hello: %s", self.name, hello.result())
            return undo
        await undo()
        if died in done:
            raise StageError("agent", f"the VMM exited during boot (status "
                             f"{self.vmm.returncode})")
        raise StageError("agent", f"cannot reach the guest agent: {hello.exception()}")

    async def _adopt_agent(self, spec: LaunchSpec) -> Undo:
        self.transport = SerialMuxTransport(spec.layout.channel_socket, self.name)
        return self._undo_transport(self.transport)

    # desktop helpers (never outlive vmsilod: a re-adopted VM gets new ones)

    async def _start_helpers(self, spec: LaunchSpec) -> Undo | None:
        if not self.helpers:
            return None
        tried: list[Helper] = []

        async def undo() -> None:
            for helper in reversed(tried):
                helper.stop(self.name)

        try:
            for helper in self.helpers:
                tried.append(helper)  # stopped even if its start fails half-way
                helper.start(self.resolved)
        except BaseException:
            await undo()  # the stage fails: its own undo is never registered
            raise
        return undo

    # -- running ----------------------------------------------------------------------------

    async def _watch(self) -> None:
        """The VMM ending while we did not ask for it: the guest powered off or crashed, or
        someone killed the VMM. Either way, clean up; anything but a clean power-off is a
        failure."""
        vmm = self.vmm
        assert vmm is not None
        await vmm.wait()
        async with self._stop_lock:
            if self.state is not Runstate.RUNNING or self.vmm is not vmm:
                return
            status = vmm.returncode
            await self._cleanup()
            if status == 0:
                self._set_state(Runstate.STOPPING)
                self._set_state(Runstate.STOPPED)
            else:
                how = f"status {status}" if status is not None else "killed or crashed"
                console = self.spec.layout.console_log if self.spec else None
                self._set_state(Runstate.FAILED, f"the VMM exited unexpectedly ({how})",
                                console)

    async def _cleanup(self) -> list[str]:
        problems: list[str] = []
        if self._stages is not None:
            problems = await self._stages.unwind(self.timeouts.cleanup)
            self._stages = None
        if self.vmm is not None:
            self.vmm.close()
        self.vmm = None
        self.transport = None
        self.started_at = None
        return problems

    @require(Runstate.RUNNING, Runstate.STARTING)
    async def open_port(self, port: int, timeout: float | None) -> Stream:
        if self.state is Runstate.STARTING:
            await self.start()
        assert self.transport is not None
        try:
            return await self.transport.open_stream(port, timeout or 30.0)
        except ChannelError as exc:
            raise UserError(f"VM {self.name}: {exc}") from exc

    def exec_client(self) -> ExecClient:
        if self.transport is None:
            raise StateError(f"VM {self.name} is {self.state.value}; it has no agent now")
        return ExecClient(self.transport, self.name, open_timeout=10.0)

    # -- stop -------------------------------------------------------------------------------

    async def stop(self) -> str:
        """Stop in bounded steps; says how it ended."""
        if self._start_task is not None and not self._start_task.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(self._start_task)
        async with self._stop_lock:
            if self.state in (Runstate.STOPPED,):
                return "already stopped"
            if self.state is Runstate.FAILED:
                await self._cleanup()
                self._set_state(Runstate.STOPPED)
                return "cleared the failure"
            self._set_state(Runstate.STOPPING)
            how = await self._shutdown()
            problems = await self._cleanup()
            if self._watcher is not None:
                self._watcher.cancel()
                self._watcher = None
            if problems:
                self._set_state(Runstate.FAILED, "; ".join(problems))
            else:
                self._set_state(Runstate.STOPPED)
            return how

    async def _shutdown(self) -> str:
        vmm, spec = self.vmm, self.spec
        if vmm is None or spec is None:
            return "nothing was running"
        if self.transport is not None:
            try:
                await asyncio.wait_for(self.exec_client().poweroff(), 10)
                if await vmm.wait(self.timeouts.agent_poweroff):
                    return "guest powered off"
            except (ChannelError, TimeoutError, OSError, Exception) as exc:
                log.info("VM %s: agent poweroff did not finish: %s", self.name, exc)
        return await self.backend.stop(spec, vmm, graceful=self.timeouts.vmm_powerdown,
                                       forced=self.timeouts.vmm_quit)

    # -- re-adoption ------------------------------------------------------------------------

    async def readopt(self, runtime_dir: Path) -> bool:
        """Take over a VM whose VMM outlived the previous vmsilod. True if it runs.

        Everything is read from the root-owned runtime directory: the launch spec (which must
        be this VM's, in the places this vmsilod would put them) and the identities of the VMM
        and its jail. A VMM whose identity no longer matches is gone; one whose records cannot
        be trusted is killed if its identity still matches, and only vmsilod's own directories
        are cleaned up."""
        try:
            runtime = resources.open_runtime_dir(runtime_dir)
        except FileNotFoundError:
            return False
        except UserError as exc:
            log.error("VM %s: not re-adopting: %s", self.name, exc)
            return False
        self.runtime = runtime
        try:
            spec, vmm = self._adoptable(runtime, runtime_dir)
        except AdoptionRefused as exc:
            log.warning("VM %s: cannot re-adopt (%s); cleaning up its runtime directory",
                        self.name, exc)
            await self._clean_after_refusal(runtime, runtime_dir)
            return False
        self.spec = spec
        stages = Stages(self.name)
        if vmm is None:
            log.warning("VM %s: its VMM is gone; cleaning up", self.name)
            for resource in self.resources()[:-3]:  # what outlives the VMM
                undo = await resource.adopt(spec)
                if undo is not None:
                    stages.undo_steps.append((resource.name, undo))
            await stages.unwind(self.timeouts.cleanup)
            self.state = Runstate.FAILED
            self.reason = "the VMM exited while vmsilod was not running"
            self.log_path = spec.layout.console_log
            return False
        self.vmm = vmm
        for resource in self.resources()[:-1]:  # helpers start once the state is RUNNING
            undo = await resource.adopt(spec)
            if undo is not None:
                stages.undo_steps.append((resource.name, undo))
        self._stages = stages
        self.started_at = time.time()
        self._set_state(Runstate.RUNNING)
        helpers = self.resources()[-1]
        undo = await helpers.adopt(spec)
        if undo is not None:
            stages.undo_steps.append((helpers.name, undo))
        self._watcher = asyncio.create_task(self._watch())
        log.info("VM %s: re-adopted VMM pid %d", self.name, vmm.pid)
        return True

    def _adoptable(self, runtime: Dir, runtime_dir: Path) -> tuple[LaunchSpec,
                                                                   VmmProcess | None]:
        """The saved spec and the live VMM (None if it ended); AdoptionRefused otherwise."""
        try:
            spec = spec_from_json(json.loads(runtime.read(resources.SPEC_FILE)))
        except FileNotFoundError:
            raise AdoptionRefused("no launch spec") from None
        except (OSError, UserError, ValueError, KeyError, TypeError, AssertionError) as exc:
            raise AdoptionRefused(f"its launch spec is unreadable: {exc}") from exc
        expected = self.plan_paths()
        if spec.name != self.name or (expected is not None and (
                spec.layout.runtime_dir != runtime_dir
                or spec.layout.log_dir != expected.log_dir
                or (spec.overlay_disk is not None
                    and spec.overlay_disk.path != expected.overlay))):
            raise AdoptionRefused("its launch spec names another VM's places")
        identities = self._saved_identities(runtime)
        qemu = identities.get("vmm")
        if qemu is None:
            raise AdoptionRefused("no record of its VMM")
        pidfd = qemu.pidfd()
        if pidfd is None:
            return spec, None
        monitor = identities.get("monitor")
        monitor_pid = monitor.pid if monitor is not None and monitor.alive() else None
        return spec, VmmProcess(qemu.pid, monitor_pid=monitor_pid, pidfd=pidfd)

    def _saved_identities(self, runtime: Dir) -> dict[str, ProcessIdentity]:
        try:
            data = json.loads(runtime.read(resources.PROCESSES_FILE))
        except FileNotFoundError:
            return {}
        except (OSError, UserError, ValueError) as exc:
            raise AdoptionRefused(f"its process record is unreadable: {exc}") from exc
        if not isinstance(data, dict):
            raise AdoptionRefused("its process record is malformed")
        found = {}
        for key in ("vmm", "monitor"):
            if data.get(key) is not None:
                try:
                    found[key] = ProcessIdentity.from_json(data[key])
                except ValueError as exc:
                    raise AdoptionRefused(f"its process record is malformed ({exc})") from exc
        return found

    async def _clean_after_refusal(self, runtime: Dir, runtime_dir: Path) -> None:
        """A VMM whose records are unusable must not run on unmanaged: kill it if the
        identity record still names a live process; remove the network the record names if
        it is this VM's; then the runtime directory. Nothing else is touched."""
        with contextlib.suppress(AdoptionRefused):
            for identity in self._saved_identities(runtime).values():
                if kill_if_alive(identity):
                    log.warning("VM %s: killed its unmanageable process %d", self.name,
                                identity.pid)
        plan = self._saved_network(runtime)
        if plan is not None:
            await asyncio.to_thread(remove_plan, plan)
        runtime.close()
        self.runtime = None
        resources.release_runtime_dir_at(runtime_dir)

    def plan_paths(self) -> ExpectedPaths | None:
        return self.expected_paths(self.name) if self.expected_paths is not None else None


@dataclass(frozen=True)
class ExpectedPaths:
    """Where this vmsilod keeps a VM's things: a saved spec must agree."""

    log_dir: Path
    overlay: Path


def _bind(action: Callable[[LaunchSpec], Awaitable[Undo | None]],
          spec: LaunchSpec) -> Callable[[], Awaitable[Undo | None]]:
    return lambda: action(spec)


def _process_record(vmm: VmmProcess) -> dict[str, Any] | None:
    """The identities of the VMM and its jail's monitor. The VMM may still be on its way
    through the jail's launchers (bubblewrap, prlimit, setpriv exec into it, keeping pid
    and start time), so its identity names the executable it is becoming."""
    start = start_time(vmm.pid)
    exe = vmm.exe or executable(vmm.pid)
    if start is None or exe is None:
        return None
    monitor = ProcessIdentity.of(vmm.monitor_pid) if vmm.monitor_pid else None
    return {"vmm": ProcessIdentity(vmm.pid, start, exe).to_json(),
            "monitor": monitor.to_json() if monitor else None}
