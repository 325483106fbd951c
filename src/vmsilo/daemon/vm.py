"""One VM as vmsilod sees it: its state, its start and stop, its VMM and its guest channel.

Start runs in bounded stages (image, runtime dir, network, overlay, shared folders, VMM,
agent hello) through one
rollback guard; concurrent start requests share a single start. Once running, a watcher
notices the VMM ending on its own (crash, kill, guest power-off) and cleans up. Stop asks the
agent, then the VMM, then kills — each step bounded. A VM whose VMM outlived an earlier
vmsilod is re-adopted from the launch spec saved in its runtime directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmsilo.channel.exec_client import ExecClient
from vmsilo.channel.stream import ChannelError, Stream
from vmsilo.channel.transports import SerialMuxTransport, Transport
from vmsilo.config import ResolvedVm
from vmsilo.daemon import resources
from vmsilo.daemon.runstate import Runstate, StateError, check_transition, require
from vmsilo.daemon.stages import StageError, Stages, Undo, rollback_on_failure
from vmsilo.errors import UserError
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
    vmm_quit: float = 10.0
    cleanup: float = 30.0


# (resolved VM) -> launch spec, or a UserError saying what is missing (e.g. the image)
PlanFn = Callable[[ResolvedVm], LaunchSpec]
# (resolved VM) -> what the host builds for its network (TAPs, bridges, nftables tables)
NetworkFn = Callable[[ResolvedVm], NetworkPlan]

NETWORK_RECORD = "network.json"  # in the runtime dir: the plan that was applied


class VmController:
    def __init__(
        self,
        resolved: ResolvedVm,
        backend: Backend,
        plan: PlanFn,
        *,
        owner: tuple[int, int] | None = None,
        timeouts: Timeouts = Timeouts(),
        on_state: Callable[[VmController], Awaitable[None]] | None = None,
        network: NetworkFn | None = None,
        shares: ShareService | None = None,
    ) -> None:
        self.name = resolved.name
        self.resolved = resolved  # the config the VM runs (or will run) with
        self.pending: ResolvedVm | None = None  # a reloaded config waiting for a restart
        self.backend = backend
        self.plan = plan
        self.owner = owner  # uid, gid the VMM and its files belong to (system mode)
        self.timeouts = timeouts
        self.on_state = on_state
        self.network = network
        self.shares = shares
        self.state = Runstate.STOPPED
        self.reason: str | None = None
        self.log_path: Path | None = None
        self.started_at: float | None = None
        self.spec: LaunchSpec | None = None
        self.vmm: VmmProcess | None = None
        self.transport: Transport | None = None
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
                await stages.run("runtime directory", lambda: self._acquire_runtime(spec), 10)
                await stages.run("network", lambda: self._acquire_network(spec), 60)
                await stages.run("root overlay", lambda: self._acquire_overlay(spec), 30)
                await stages.run("shared folders", lambda: self._acquire_shares(spec), 120)
                await stages.run("VMM", lambda: self._launch(spec), self.timeouts.vmm_start)
                await stages.run("agent", lambda: self._wait_for_agent(spec),
                                 self.timeouts.agent_hello)
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

    # Each resource's release, built in one place: the start stages register these, and a
    # re-adopted VM gets the same ones from its saved launch spec.

    def _undo_runtime(self, spec: LaunchSpec) -> Undo:
        async def undo() -> None:
            resources.release_runtime_dir(spec)

        return undo

    def _undo_overlay(self, spec: LaunchSpec) -> Undo:
        async def undo() -> None:
            resources.release_overlay(spec)

        return undo

    def _undo_network(self, plan: NetworkPlan) -> Undo:
        async def undo() -> None:
            await asyncio.to_thread(remove_plan, plan)

        return undo

    @staticmethod
    def _undo_shares(running: list[RunningShare]) -> Undo:
        async def undo() -> None:
            await asyncio.to_thread(ShareService.stop_all, running)

        return undo

    def _undo_vmm(self, spec: LaunchSpec, vmm: VmmProcess) -> Undo:
        async def undo() -> None:
            await self.backend.stop(spec, vmm, graceful=0, forced=self.timeouts.vmm_quit)
            vmm.close()

        return undo

    @staticmethod
    def _undo_transport(transport: Transport) -> Undo:
        async def undo() -> None:
            await transport.close()

        return undo

    async def _acquire_runtime(self, spec: LaunchSpec) -> Undo:
        resources.acquire_runtime_dir(spec, self.owner)
        return self._undo_runtime(spec)

    async def _acquire_network(self, spec: LaunchSpec) -> Undo | None:
        plan = self.network(self.resolved) if self.network is not None else None
        if plan is None or not plan.taps:
            return None
        # Saved first: a daemon that dies half-way still finds what to remove.
        record = spec.layout.runtime_dir / NETWORK_RECORD
        record.write_text(json.dumps(plan_to_json(plan)))
        result = await asyncio.to_thread(apply_plan, plan)
        for tap in result.without_fq_codel:
            log.info("VM %s: TAP %s has no fq_codel (the kernel lacks it)", self.name, tap)
        return self._undo_network(plan)

    def _saved_network(self, runtime_dir: Path) -> NetworkPlan | None:
        try:
            return plan_from_json(json.loads((runtime_dir / NETWORK_RECORD).read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("VM %s: cannot read its network record (%s)", self.name, exc)
            return None

    async def _remove_saved_network(self, runtime_dir: Path) -> None:
        plan = self._saved_network(runtime_dir)
        if plan is not None:
            await asyncio.to_thread(remove_plan, plan)

    async def _acquire_shares(self, spec: LaunchSpec) -> Undo | None:
        if self.shares is None or not spec.shares:
            return None
        running = await asyncio.to_thread(self.shares.start_all, self.resolved, spec,
                                          self.owner)
        return self._undo_shares(running)

    async def _acquire_overlay(self, spec: LaunchSpec) -> Undo:
        resources.acquire_overlay(spec, self.owner)
        return self._undo_overlay(spec)

    async def _launch(self, spec: LaunchSpec) -> Undo:
        uid, gid = self.owner if self.owner is not None else (None, None)
        self.vmm = await self.backend.launch(spec, uid=uid, gid=gid)
        return self._undo_vmm(spec, self.vmm)

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
        except asyncio.CancelledError:  # the stage's timeout
            await undo()
            raise StageError(
                "agent",
                f"the guest agent did not say hello within {self.timeouts.agent_hello:g} s; "
                "the kernel or init may have failed",
            ) from None
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
        return await self.backend.stop(spec, vmm, graceful=5.0, forced=self.timeouts.vmm_quit)

    # -- re-adoption ------------------------------------------------------------------------

    def _kill_orphan(self, runtime_dir: Path) -> None:
        """A VMM we cannot re-adopt must not run on unmanaged: kill it if its pidfile names a
        live process whose command line marks it as this VM's VMM."""
        try:
            pid = int((runtime_dir / "vmm.pid").read_text().strip())
        except (OSError, ValueError):
            return
        if self.backend.owns_process(pid, self.name):
            log.warning("VM %s: killing its unmanageable VMM (pid %d)", self.name, pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)

    async def readopt(self, runtime_dir: Path) -> bool:
        """Take over a VM whose VMM outlived the previous vmsilod. True if it runs."""
        spec_file = runtime_dir / "launch.json"
        if not spec_file.exists():
            return False
        try:
            spec = spec_from_json(json.loads(spec_file.read_text()))
            pid = int((spec.layout.pidfile).read_text().strip())
        except (OSError, ValueError, KeyError, TypeError, AssertionError) as exc:
            log.warning("VM %s: cannot read %s (%s); stopping what is left", self.name,
                        spec_file, exc)
            self._kill_orphan(runtime_dir)
            await self._remove_saved_network(runtime_dir)
            resources.release_runtime_dir_at(runtime_dir)
            return False
        self.spec = spec
        if not self.backend.owns_process(pid, spec.name):
            log.warning("VM %s: its VMM (pid %d) is gone; cleaning up", self.name, pid)
            resources.release_overlay(spec)
            ShareService.stop_all(ShareService.adopt_all(spec))
            await self._remove_saved_network(runtime_dir)
            resources.release_runtime_dir(spec)
            self.state = Runstate.FAILED
            self.reason = "the VMM exited while vmsilod was not running"
            self.log_path = None
            return False
        self.vmm = VmmProcess(pid)
        self.transport = SerialMuxTransport(spec.layout.channel_socket, self.name)
        stages = Stages(self.name)
        stages.undo_steps = [("runtime directory", self._undo_runtime(spec))]
        network = self._saved_network(runtime_dir)
        if network is not None:
            stages.undo_steps.append(("network", self._undo_network(network)))
        stages.undo_steps += [
            ("root overlay", self._undo_overlay(spec)),
            ("shared folders", self._undo_shares(ShareService.adopt_all(spec))),
            ("VMM", self._undo_vmm(spec, self.vmm)),
            ("agent", self._undo_transport(self.transport)),
        ]
        self._stages = stages
        self.started_at = os.stat(spec.layout.pidfile).st_mtime
        self._set_state(Runstate.RUNNING)
        self._watcher = asyncio.create_task(self._watch())
        log.info("VM %s: re-adopted VMM pid %d", self.name, pid)
        return True

