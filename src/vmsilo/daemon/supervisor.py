"""All VMs of the config, and what spans them: dependencies, autoStart, autoShutdown, reload.

The supervisor turns control requests into controller calls: ``start`` starts dependencies
first (transitively; the config check has ruled out cycles), ``open_port`` starts the VM on
demand, ``reload`` swaps the config for stopped VMs and marks running ones as pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vmsilo.channel.stream import Stream
from vmsilo.config import Resolved, ResolvedVm
from vmsilo.config.model import HOST_NETVM
from vmsilo.daemon.runstate import Runstate
from vmsilo.daemon.vm import VmController
from vmsilo.errors import UserError

log = logging.getLogger(__name__)

ControllerFactory = Callable[[ResolvedVm], VmController]


class Supervisor:
    def __init__(self, resolved: Resolved, make_controller: ControllerFactory,
                 load: Callable[[], Resolved]) -> None:
        self.resolved = resolved
        self.make_controller = make_controller
        self.load = load  # re-reads the config, for reload
        self.vms: dict[str, VmController] = {
            name: make_controller(rvm) for name, rvm in resolved.vms.items()
        }
        self._idle_tasks: dict[str, asyncio.Task[None]] = {}
        self._removed: set[str] = set()  # dropped from the config, still running
        self._activity: dict[str, float] = {}  # VM -> when a stream to it was last opened

    def controller(self, name: str) -> VmController:
        vm = self.vms.get(name)
        if vm is None or name in self._removed:
            known = ", ".join(n for n in sorted(self.vms) if n not in self._removed) or "none"
            raise UserError(f"unknown VM {name!r}; the configured VMs are: {known}")
        return vm

    # -- requests ---------------------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        return [vm.status_row() for _, vm in sorted(self.vms.items())]

    def _with_dependencies(self, name: str) -> list[str]:
        order: list[str] = []

        def visit(vm: str) -> None:
            if vm in order:
                return
            config = self.controller(vm).resolved.vm
            # A VM netvm must be up before its clients: their link has no gateway otherwise.
            netvm = config.network.netvm
            deps = [*config.depends_on, *([netvm] if netvm and netvm != HOST_NETVM else [])]
            for dep in deps:
                visit(dep)
            order.append(vm)

        visit(name)
        return order

    async def start(self, name: str) -> None:
        for vm in self._with_dependencies(name):
            await self.controller(vm).start()
            self._watch_idle(self.vms[vm])

    async def stop(self, name: str) -> str:
        # A VM dropped from the config that still runs is listed by status: stop it by name.
        vm = self.vms[name] if name in self._removed else self.controller(name)
        how = await vm.stop()
        self._after_stop(vm)
        return how

    async def stop_all(self) -> list[str]:
        running = [vm for vm in self.vms.values() if vm.state is not Runstate.STOPPED]
        results = await asyncio.gather(*(vm.stop() for vm in running), return_exceptions=True)
        for vm in running:
            self._after_stop(vm)
        return [f"{vm.name}: {r}" for vm, r in zip(running, results, strict=True)]

    def _after_stop(self, vm: VmController) -> None:
        task = self._idle_tasks.pop(vm.name, None)
        if task is not None:
            task.cancel()
        if vm.name in self._removed and vm.state is Runstate.STOPPED:
            del self.vms[vm.name]
            self._removed.discard(vm.name)

    async def open_port(self, name: str, port: int, start: bool,
                        timeout: float | None) -> Stream:
        vm = self.controller(name)
        if vm.state is not Runstate.RUNNING:
            if not start:
                raise UserError(f"VM {name} is {vm.state.value}; start it with: vm-start {name}")
            await self.start(name)
        self._activity[name] = time.monotonic()
        return await vm.open_port(port, timeout)

    async def open_console(self, name: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        vm = self.controller(name)
        if vm.state is not Runstate.RUNNING or vm.spec is None:
            raise UserError(f"VM {name} is {vm.state.value}; its console exists only while it "
                            f"runs (start it with: vm-start {name})")
        path = vm.spec.layout.console_socket
        try:
            return await asyncio.open_unix_connection(str(path))
        except OSError as exc:
            raise UserError(f"VM {name}: cannot attach to the console {path}: {exc}") from exc

    async def reload(self) -> list[str]:
        """Re-read the config. Stopped VMs take the new one now; running VMs keep theirs
        until they restart. Returns the names of VMs with a pending change."""
        new = self.load()  # a ConfigError (a UserError) leaves everything as it was
        for name, rvm in new.vms.items():
            vm = self.vms.get(name)
            if vm is None:
                self.vms[name] = self.make_controller(rvm)
            elif vm.state in (Runstate.STOPPED, Runstate.FAILED):
                vm.resolved, vm.pending = rvm, None
            elif _vm_document(new, name) != _vm_document(self.resolved, name):
                vm.pending = rvm
            self._removed.discard(name)
        for name in list(self.vms):
            if name not in new.vms:
                if self.vms[name].state in (Runstate.STOPPED, Runstate.FAILED):
                    del self.vms[name]
                else:
                    self._removed.add(name)
                    self.vms[name].pending = self.vms[name].resolved
        self.resolved = new
        return sorted(n for n, vm in self.vms.items() if vm.pending is not None)

    async def shutdown(self) -> None:
        """Before vmsilod exits: stop watching for idleness and roll back starts under way."""
        for task in self._idle_tasks.values():
            task.cancel()
        self._idle_tasks.clear()
        await asyncio.gather(*(vm.abandon_start() for vm in self.vms.values()))

    # -- autoStart / autoShutdown / re-adoption ---------------------------------------------

    async def readopt_all(self, runtime_dir_of: Callable[[str], Path]) -> list[str]:
        adopted = []
        for name, vm in self.vms.items():
            if await vm.readopt(runtime_dir_of(name)):
                adopted.append(name)
                self._watch_idle(vm)
        return adopted

    async def autostart(self) -> None:
        for name, vm in sorted(self.vms.items()):
            if vm.resolved.vm.auto_start and vm.state is Runstate.STOPPED:
                try:
                    await self.start(name)
                except UserError as exc:
                    log.error("autoStart of %s failed: %s", name, exc)

    def _watch_idle(self, vm: VmController) -> None:
        settings = vm.resolved.vm.auto_shutdown
        watching = self._idle_tasks.get(vm.name)
        # A watch ends by itself once its VM stops on its own (a guest power-off, a crash).
        if not settings.enable or (watching is not None and not watching.done()):
            return
        self._idle_tasks[vm.name] = asyncio.create_task(self._idle_loop(vm, settings.after))

    async def _idle_loop(self, vm: VmController, after: float) -> None:
        """Stop the VM once the agent has reported no running command for ``after`` seconds.
        Idle time is measured on the host's clock: the guest's clock is only used to notice
        that a command ended between two polls."""
        interval = max(0.5, min(5.0, after / 4))
        idle_since: float | None = None
        last_ended: float | None = None
        while vm.state is Runstate.RUNNING:
            await asyncio.sleep(interval)
            try:
                report = await asyncio.wait_for(vm.exec_client().status(), 10)
            except Exception as exc:  # an unreachable agent is not idleness
                log.debug("VM %s: idle report failed: %s", vm.name, exc)
                idle_since = None
                continue
            now = time.monotonic()
            active = (report.running > 0 or report.last_ended != last_ended
                      or self._activity.get(vm.name, 0) > (idle_since or now))
            last_ended = report.last_ended
            if active:
                idle_since = None
                continue
            if idle_since is None:
                idle_since = now
            elif now - idle_since >= after:
                log.info("VM %s: idle for %.0f s, stopping (autoShutdown)", vm.name, after)
                self._idle_tasks.pop(vm.name, None)
                with contextlib.suppress(UserError):
                    await vm.stop()
                return


def _vm_document(resolved: Resolved, name: str) -> Any:
    return resolved.to_dict()["vms"].get(name)
