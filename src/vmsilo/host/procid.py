"""Knowing that a pid is still the process vmsilod started, not a reused number.

A pid alone names whatever process holds it now. ``ProcessIdentity`` adds the process's start
time (field 22 of ``/proc/<pid>/stat``, in clock ticks since boot; proc(5)) and the path of
its executable: together they single out one process for the life of the boot. vmsilod saves
the identity of what it launches in its root-owned runtime directory, and a later vmsilod
adopts a pid only if all three still match — and then holds a pidfd, which cannot be reused.
Nothing in a process's argv (which any process can set to anything) is trusted.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROC = Path("/proc")


def start_time(pid: int, proc: Path = PROC) -> int | None:
    """Field 22 of ``/proc/<pid>/stat``, or None if there is no such process. The command
    name (field 2) may hold spaces and parentheses, so fields are counted after its last
    ``)``."""
    try:
        raw = (proc / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2:].split()
    # fields[0] is field 3 (state); field 22 is fields[19].
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def executable(pid: int, proc: Path = PROC) -> str | None:
    try:
        return os.readlink(proc / str(pid) / "exe")
    except OSError:
        return None


@dataclass(frozen=True)
class ProcessIdentity:
    pid: int
    start: int  # clock ticks after boot
    exe: str

    @classmethod
    def of(cls, pid: int, proc: Path = PROC) -> ProcessIdentity | None:
        """The identity of the live process ``pid``, or None if it is gone."""
        start, exe = start_time(pid, proc), executable(pid, proc)
        if start is None or exe is None:
            return None
        return cls(pid, start, exe)

    def alive(self, proc: Path = PROC) -> bool:
        """Whether ``pid`` is still this very process."""
        return ProcessIdentity.of(self.pid, proc) == self

    def pidfd(self) -> int | None:
        """A pidfd for the process, checked after opening (so the pidfd cannot name a
        process that took the pid in between); None if it is gone."""
        try:
            fd = os.pidfd_open(self.pid)
        except (ProcessLookupError, OSError):
            return None
        if not self.alive():
            os.close(fd)
            return None
        return fd

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "start": self.start, "exe": self.exe}

    @classmethod
    def from_json(cls, data: Any) -> ProcessIdentity:
        """Raises ``ValueError`` on anything but the shape ``to_json`` writes."""
        if not isinstance(data, dict) or set(data) != {"pid", "start", "exe"}:
            raise ValueError("not a process identity")
        pid, start, exe = data["pid"], data["start"], data["exe"]
        if (not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1
                or not isinstance(start, int) or isinstance(start, bool) or start < 0
                or not isinstance(exe, str) or not exe.startswith("/")):
            raise ValueError("not a process identity")
        return cls(pid, start, exe)


def kill_if_alive(identity: ProcessIdentity, signal: int = 9) -> bool:
    """Signal the process only if it still is ``identity`` (through a checked pidfd)."""
    import signal as signals

    fd = identity.pidfd()
    if fd is None:
        return False
    try:
        with contextlib.suppress(ProcessLookupError):
            signals.pidfd_send_signal(fd, signal)
    finally:
        os.close(fd)
    return True
