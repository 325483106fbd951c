"""The interface every VMM backend implements, and the handle on a running VMM.

A backend turns a ``LaunchSpec`` into a command line and knows its VMM's control channel
(graceful stop, balloon). ``VmmProcess`` watches the VMM's process through a pidfd, so it works
the same for a child we just started and for one re-adopted after a daemon restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from vmsilo.hypervisor.spec import LaunchSpec


class VmmLaunchError(Exception):
    """The VMM did not come up. Carries what a user needs to find out why."""

    def __init__(self, vm: str, reason: str, command: list[str], log: Path) -> None:
        self.vm = vm
        self.reason = reason
        self.command = command
        self.log = log
        tail = ""
        with contextlib.suppress(OSError):
            lines = log.read_text(errors="replace").strip().splitlines()[-5:]
            tail = "".join(f"\n  {line}" for line in lines)
        super().__init__(f"VM {vm}: the VMM {reason}; see {log}{tail}")


class VmmProcess:
    """A running VMM process, watched through a pidfd (no polling, no pid reuse races).

    ``pid`` is the VMM itself; ``monitor`` the jail's outer process (bubblewrap), our child
    when we started it, which ends with the VMM's exit status. A re-adopted VMM has no
    ``monitor`` Popen, so its exit status is unknown."""

    def __init__(self, pid: int, monitor: subprocess.Popen[bytes] | None = None,
                 monitor_pid: int | None = None, pidfd: int | None = None) -> None:
        self.pid = pid
        self._popen = monitor
        self.monitor_pid = monitor.pid if monitor is not None else monitor_pid
        # The executable the process runs once started (its jail's launchers exec into it):
        # what its recorded identity must name even if recorded before that exec.
        self.exe: str | None = None
        self._pidfd = pidfd if pidfd is not None else os.pidfd_open(pid)

    def exited(self) -> bool:
        import select

        if self._pidfd < 0:  # closed: we were done with it
            return True
        return bool(select.select([self._pidfd], [], [], 0)[0])

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode if self._popen is not None else None

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait for the process to end; True if it did within ``timeout``."""
        if not self.exited():
            loop = asyncio.get_running_loop()
            done = loop.create_future()
            fd = self._pidfd  # close() may run meanwhile: unregister what was registered
            loop.add_reader(fd, _resolve, done)
            try:
                await asyncio.wait_for(done, timeout)
            except TimeoutError:
                return False
            finally:
                with contextlib.suppress(ValueError, OSError):
                    loop.remove_reader(fd)
        if self._popen is not None:  # the monitor ends right after the VMM, with its status
            await asyncio.to_thread(self._popen.wait)
        return True

    def kill(self) -> None:
        if self._pidfd < 0:
            return
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)

    def close(self) -> None:
        """Idempotent: once closed, the pidfd's number may already belong to someone else."""
        fd, self._pidfd = self._pidfd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Backend(ABC):
    """One VMM flavour: QEMU, cloud-hypervisor or crosvm."""

    name: ClassVar[str]

    @abstractmethod
    async def launch(self, spec: LaunchSpec, *, runtime: Any, console_log: int, vmm_log: int,
                     jail: Any, on_spawn: Any = None) -> VmmProcess:
        """Start the VMM jailed, with every host resource passed as a descriptor; return
        once its control channel answers. ``on_spawn(vmm)`` is called as soon as the VMM
        process exists. A launch that does not return (fails, or is cancelled) must end what
        it started."""

    @abstractmethod
    async def request_shutdown(self, spec: LaunchSpec) -> None:
        """Ask the guest to power off through the VMM (ACPI power button or equivalent)."""

    @abstractmethod
    async def quit(self, spec: LaunchSpec) -> None:
        """Tell the VMM to exit now, without waiting for the guest."""

    async def stop(self, spec: LaunchSpec, vmm: VmmProcess, *, graceful: float = 20.0,
                   forced: float = 5.0) -> str:
        """Stop in stages, each bounded: ask the guest, tell the VMM, kill. Says which worked."""
        if vmm.exited():
            return "already stopped"
        with contextlib.suppress(Exception):
            await self.request_shutdown(spec)
            if await vmm.wait(graceful):
                return "guest powered off"
        with contextlib.suppress(Exception):
            await self.quit(spec)
            if await vmm.wait(forced):
                return "VMM quit"
        vmm.kill()
        await vmm.wait(forced)
        return "VMM killed"
