"""vmsilo-balloond's loop: find running VMs, and each tick read the host's memory once, then per
VM ``driver.stats()`` → ``StallDetector.observe`` → ``BalloonPolicy.decide`` →
``driver.set_target``; then write the status file ``vmsilo balloon status`` reads.

VMs are found in vmsilod's runtime directory: a ``<vm>/`` with a ``launch.json`` whose spec
has a balloon, and the balloon's QMP socket. inotify wakes the loop when VM directories come
and go (so a new VM is seen at once, not a tick later); every tick also rescans, so a missed
event costs at most one interval. A VM whose VMM cannot be reached, or that sends a malformed
reply, is dropped for the tick and reported; it is retried on the next.

balloond outlives a vmsilod *restart* (the VMs keep running and keep being balanced), but not
vmsilod's end: once it has seen vmsilod's control socket, it exits when that socket is gone
and no VM with a balloon remains (vmsilod also stops it at an exit that leaves no VM running;
this covers VMs that outlived vmsilod and ended later). A balloond run by hand, with no
vmsilod ever, is left to run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmsilo.balloon.drivers.base import BalloonDriver, DriverError
from vmsilo.balloon.drivers.qemu import BALLOON_SOCKET, QemuBalloon, balloon_socket
from vmsilo.balloon.interval import (
    MEMINFO,
    PSI_MEMORY,
    HostMemory,
    poll_interval,
    read_host_memory,
    read_pressure,
)
from vmsilo.balloon.policy import BalloonPolicy, Observation, next_target
from vmsilo.balloon.settings import BalloonSettings
from vmsilo.balloon.stall import Freshness, StallDetector

log = logging.getLogger("vmsilo-balloond")

STATUS_FILE = "balloond.json"
SPEC_FILE = "launch.json"
CONTROL_SOCKET = "control.socket"  # vmsilod's, in the same run directory (host/paths.py)

DriverFactory = Callable[[str, Path], BalloonDriver]


def qemu_driver(vm: str, runtime_dir: Path) -> BalloonDriver:
    return QemuBalloon(vm, balloon_socket(runtime_dir))


@dataclass
class Tracked:
    name: str
    runtime_dir: Path
    driver: BalloonDriver
    policy: BalloonPolicy
    connected: bool = False
    row: dict[str, Any] = field(default_factory=dict)


def find_vms(run_dir: Path) -> dict[str, Path]:
    """VMs with a balloon, by name: runtime dirs whose launch spec asks for one."""
    found = {}
    try:
        entries = list(run_dir.iterdir())
    except OSError:
        return {}
    for entry in entries:
        spec_file = entry / SPEC_FILE
        if not entry.is_dir() or not spec_file.exists():
            continue
        try:
            spec = json.loads(spec_file.read_text())
        except (OSError, ValueError):
            continue
        wanted = (
            isinstance(spec, dict) and spec.get("balloon") and isinstance(spec.get("name"), str)
        )
        if wanted and balloon_socket(entry).exists():
            found[spec["name"]] = entry
    return found


class Balloond:
    def __init__(
        self,
        run_dir: Path,
        settings: BalloonSettings,
        *,
        meminfo: Path = MEMINFO,
        pressure: Path = PSI_MEMORY,
        make_driver: DriverFactory = qemu_driver,
        stall_after: float = 10.0,
    ) -> None:
        self.run_dir = run_dir
        self.settings = settings
        self.meminfo = meminfo
        self.pressure = pressure
        self.make_driver = make_driver
        self.stall = StallDetector(stall_after)
        self.vms: dict[str, Tracked] = {}
        self.ticks = 0
        self.cpu_seconds = 0.0  # this process's CPU time spent in ticks
        self._wake = asyncio.Event()
        self._seen_vmsilod = False

    def orphaned(self) -> bool:
        """True once vmsilod has ended for good as far as balloond can tell: its control socket,
        seen before, is gone, and no VM with a balloon is left (after a tick's rescan)."""
        if (self.run_dir / CONTROL_SOCKET).exists():
            self._seen_vmsilod = True
            return False
        return self._seen_vmsilod and not self.vms

    @property
    def status_path(self) -> Path:
        return self.run_dir / STATUS_FILE

    async def _sync_vms(self, host: HostMemory) -> None:
        present = find_vms(self.run_dir)
        for name in [n for n in self.vms if n not in present]:
            gone = self.vms.pop(name)
            self.stall.forget(name)
            with contextlib.suppress(Exception):
                await gone.driver.close()
            log.info("VM %s: gone", name)
        for name, runtime_dir in present.items():
            if name not in self.vms:
                policy = BalloonPolicy(
                    critical_host_available=self.settings.critical_host_available(host.total),
                    critical_guest_available=self.settings.critical_guest_available,
                    guest_available_bias=self.settings.guest_available_bias,
                )
                self.vms[name] = Tracked(
                    name, runtime_dir, self.make_driver(name, runtime_dir), policy
                )
                log.info("VM %s: found", name)

    async def _tick_vm(self, vm: Tracked, host: HostMemory, now: float) -> None:
        driver = vm.driver
        try:
            if not vm.connected:
                await driver.connect()
                vm.connected = True
            stats = await driver.stats()
            actual = await driver.actual()
        except DriverError as exc:
            vm.connected = False
            with contextlib.suppress(Exception):
                await driver.close()
            vm.row = {"state": "unreachable", "reason": exc.reason}
            log.warning("%s", exc)
            return
        state = self.stall.observe(vm.name, stats.last_update if stats else None, now)
        observation = (None if stats is None else Observation(
            actual, stats.free, stats.caches, stats.total, host.available, stats.available))
        row: dict[str, Any] = {
            "actual": actual,
            "target": actual,
            # What the policy counts: the guest's MemAvailable (never free + caches, which
            # counts tmpfs and shmem).
            "guestAvailable": observation.guest_available if observation else None,
            "guestTotal": stats.total if stats else None,
            "floor": vm.policy.learned_floor,
            "state": state.freshness.value,
        }
        if observation is None:
            row["reason"] = "no guest stats yet"
        elif state.freshness is not Freshness.FRESH:
            row["reason"] = f"left alone: {state.describe()}"
            if state.freshness is Freshness.STALLED:
                log.warning("VM %s: guest stats stalled (%s)", vm.name, state.describe())
        else:
            decision = vm.policy.decide(observation)
            target = next_target(actual, decision.delta)
            row.update(
                target=target,
                reason=decision.reason,
                delta=decision.delta,
                floor=decision.learned_floor,
            )
            if target != actual:
                try:
                    await driver.set_target(target)
                except DriverError as exc:
                    row["reason"] = f"set target failed: {exc.reason}"
                    vm.connected = False
                log.debug("VM %s: %s", vm.name, decision.reason)
        vm.row = row

    async def tick(self) -> float:
        """One round over every VM; returns the seconds until the next."""
        cpu_before = time.process_time()
        host = read_host_memory(self.meminfo)
        pressure = read_pressure(self.pressure)
        avg10 = pressure.some.avg10 if pressure is not None else 0.0
        interval = poll_interval(avg10, self.settings)
        await self._sync_vms(host)
        now = time.monotonic()
        for vm in list(self.vms.values()):
            await self._tick_vm(vm, host, now)
        self.ticks += 1
        self.cpu_seconds += time.process_time() - cpu_before
        self._write_status(host, avg10, interval)
        return interval

    def _write_status(self, host: HostMemory, avg10: float, interval: float) -> None:
        document = {
            "updated": time.time(),
            "pid": os.getpid(),
            "ticks": self.ticks,
            "cpuSecondsPerTick": self.cpu_seconds / self.ticks if self.ticks else 0.0,
            "host": {
                "total": host.total,
                "available": host.available,
                "psiSomeAvg10": avg10,
                "criticalAvailable": self.settings.critical_host_available(host.total),
            },
            "interval": interval,
            "vms": {name: vm.row for name, vm in sorted(self.vms.items())},
        }
        tmp = self.status_path.with_name(STATUS_FILE + ".tmp")
        tmp.write_text(json.dumps(document, indent=2))
        os.chmod(tmp, 0o644)
        tmp.replace(self.status_path)

    async def _wake_on_changes(self, inotify: Any, is_dir: int) -> None:
        # Only a VM directory coming or going, or a balloon socket appearing, is news; our own
        # status file's rewrites are not (they would wake us in a loop).
        async for event in inotify:
            name = event.name.name if event.name is not None else ""
            if event.mask & is_dir or name in (BALLOON_SOCKET, CONTROL_SOCKET):
                self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        # Imported here: asyncinotify looks for the C library (running ldconfig) on import,
        # which the commands that only read balloond's status must not pay for.
        from asyncinotify import Inotify, Mask

        changes = Mask.CREATE | Mask.DELETE | Mask.MOVED_FROM | Mask.MOVED_TO
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with Inotify() as inotify:
            inotify.add_watch(self.run_dir, changes)
            watched: set[str] = set()
            waker = asyncio.create_task(self._wake_on_changes(inotify, Mask.ISDIR))
            try:
                while not stop.is_set():
                    if not self.run_dir.is_dir():
                        log.info("%s is gone; exiting", self.run_dir)
                        break
                    present = {p.name: p for p in self.run_dir.iterdir() if p.is_dir()}
                    for name in present.keys() - watched:
                        # The balloon socket appears in the VM's directory after it does.
                        with contextlib.suppress(OSError):
                            inotify.add_watch(present[name], changes)
                            watched.add(name)
                    watched &= present.keys()
                    try:
                        interval = await self.tick()
                    except (OSError, ValueError) as exc:
                        log.error("tick failed: %s", exc)
                        interval = self.settings.poll_interval
                    if self.orphaned():
                        log.info("vmsilod has ended and no VM is left; exiting")
                        break
                    self._wake.clear()
                    stopping = asyncio.ensure_future(stop.wait())
                    woken = asyncio.ensure_future(self._wake.wait())
                    await asyncio.wait(
                        {stopping, woken}, timeout=interval, return_when=asyncio.FIRST_COMPLETED
                    )
                    for task in (stopping, woken):
                        task.cancel()
            finally:
                waker.cancel()
                for vm in self.vms.values():
                    with contextlib.suppress(Exception):
                        await vm.driver.close()
                with contextlib.suppress(OSError):
                    self.status_path.unlink(missing_ok=True)
