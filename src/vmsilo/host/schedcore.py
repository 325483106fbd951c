"""Core scheduling for a VMM's threads: the config's ``schedulerIsolation``.

On a CPU with SMT (hyperthreads), two threads on sibling hardware threads of one core share
its caches and buffers, which side channels (L1TF, MDS, and their successors) can read
across. Linux's core scheduling (5.14+, ``CONFIG_SCHED_CORE``; see the kernel's
Documentation/admin-guide/hw-vuln/core-scheduling.rst and ``prctl(2)``, ``PR_SCHED_CORE``)
lets only tasks with the same *cookie* run on one core at a time. vmsilod gives cookies to the
threads of each VM's VMM after it starts:

- ``full``: the whole VMM process gets a cookie of its own (so its main loop and I/O threads
  never share a core with anything outside the VM), then every vCPU thread gets a fresh cookie
  of its own: no vCPU shares a core with anything else, not even another vCPU of its VM;
- ``vm``: one cookie for the whole VMM process: its threads (vCPUs included) may share a core
  with each other, never with another VM or the host;
- ``off``: nothing.

Cookies are made with ``prctl(PR_SCHED_CORE, PR_SCHED_CORE_CREATE, pid, scope, 0)`` on the
VMM's process (``PIDTYPE_TGID``) and on single threads (``PIDTYPE_PID``), so vmsilod never
takes a cookie itself; threads the VMM starts later inherit their creator's cookie
(``sched_core_fork``).

vCPU threads are found by their names in ``/proc/<pid>/task/<tid>/comm``: QEMU names them
``CPU <n>/KVM`` (``CPU <n>/TCG`` under multi-threaded TCG, one ``ALL CPUs/TCG`` under
single-threaded TCG), but only when started with ``-name <vm>,debug-threads=on``. The names
are the VMM's to write (``untrusted``): the threads looked at are only the VMM's own, and a
VMM that renamed its threads can only split its own cookies further; the process-wide cookie
comes first and does not depend on names. A thread that ends between the listing and the
``prctl`` is skipped.

Where the kernel lacks core scheduling (``EINVAL``: no ``CONFIG_SCHED_CORE``) or the machine
has no SMT (``ENODEV``: nothing to isolate), ``apply`` does nothing and its result says why;
the caller logs that once and goes on.

This module uses only the standard library (the system test runs it inside a guest as is).
"""

from __future__ import annotations

import ctypes
import enum
import errno
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# <linux/prctl.h>
PR_SCHED_CORE = 62
PR_SCHED_CORE_GET = 0
PR_SCHED_CORE_CREATE = 1
PR_SCHED_CORE_SHARE_TO = 2
PR_SCHED_CORE_SHARE_FROM = 3
# The ``scope`` argument: PR_SCHED_CORE_SCOPE_THREAD / _THREAD_GROUP (PIDTYPE_PID / _TGID).
SCOPE_THREAD = 0
SCOPE_THREAD_GROUP = 1

PROC = Path("/proc")

# QEMU's vCPU thread names (accel/*/…-accel-ops.c: "CPU %d/KVM", "CPU %d/TCG"; single-threaded
# TCG runs every vCPU on one "ALL CPUs/TCG" thread). Thread names are at most 15 bytes.
_VCPU_NAME = re.compile(r"CPU (\d{1,4})/([A-Z]{2,5})")
_SINGLE_THREAD_TCG = "ALL CPUs/TCG"

UNSUPPORTED_REASONS = {
    errno.EINVAL: "the kernel has no core scheduling (CONFIG_SCHED_CORE, Linux 5.14 or later)",
    errno.ENODEV: "the CPU has no SMT (hyperthreads), so there is no core to share",
}


class Mode(enum.Enum):
    FULL = "full"
    VM = "vm"
    OFF = "off"


class SchedCoreError(OSError):
    """A ``prctl(PR_SCHED_CORE, …)`` failed for a reason other than missing support: the
    VMM is not ours to change (``EPERM``) or the kernel ran out of memory (``ENOMEM``)."""


@dataclass(frozen=True)
class VcpuThread:
    """A vCPU thread of a VMM: its tid and the name it gave itself. ``index`` is the vCPU
    number, ``None`` for the single thread that runs all vCPUs."""

    tid: int
    untrusted_name: str
    index: int | None


@dataclass(frozen=True)
class Step:
    """One ``prctl(PR_SCHED_CORE, PR_SCHED_CORE_CREATE, target, scope, 0)``."""

    target: int
    scope: int


@dataclass(frozen=True)
class Result:
    """What ``apply`` did to VMM ``pid``.

    ``process_cookie``: the process got one cookie (all its threads). ``vcpu_cookies``: tids
    that got a cookie of their own. ``unsupported``: why nothing was done on this machine
    (``None`` when it was, or when the mode is ``off``). ``note``: something the operator
    should know (e.g. no vCPU threads found by name, so ``full`` gave one cookie per VM).
    """

    pid: int
    mode: Mode
    vcpus: tuple[VcpuThread, ...] = ()
    process_cookie: bool = False
    vcpu_cookies: tuple[int, ...] = ()
    unsupported: str | None = None
    note: str | None = None
    skipped: tuple[int, ...] = field(default=())  # threads gone before their prctl

    def describe(self) -> str:
        """One line for vmsilod's log."""
        if self.mode is Mode.OFF:
            return "core scheduling off (schedulerIsolation = \"off\")"
        if self.unsupported is not None:
            return (f"core scheduling not used: {self.unsupported}; schedulerIsolation = "
                    f"\"{self.mode.value}\" has no effect on this machine")
        parts = []
        if self.process_cookie:
            parts.append(f"VMM process {self.pid}: one cookie")
        if self.vcpu_cookies:
            parts.append(f"{len(self.vcpu_cookies)} vCPU threads: a cookie each")
        text = f"core scheduling ({self.mode.value}): " + "; ".join(parts)
        return text + (f"; {self.note}" if self.note else "")


def mode_from_config(value: str) -> Mode:
    """The config's ``schedulerIsolation`` string as a ``Mode``; ``ValueError`` names the
    accepted values."""
    try:
        return Mode(value)
    except ValueError:
        accepted = ", ".join(f'"{mode.value}"' for mode in Mode)
        raise ValueError(f"schedulerIsolation = {value!r}: use one of {accepted}") from None


def vcpu_threads(pid: int, proc_root: Path = PROC) -> list[VcpuThread]:
    """The vCPU threads of process ``pid``, by the names in ``<proc_root>/<pid>/task/*/comm``,
    in tid order. Threads that end while being listed are left out. ``FileNotFoundError`` if
    the process does not exist."""
    tasks = proc_root / str(pid) / "task"
    found = []
    for entry in os.listdir(tasks):
        if not entry.isdigit():
            continue
        try:
            untrusted_name = (tasks / entry / "comm").read_bytes().decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended
        untrusted_name = untrusted_name.removesuffix("\n")
        match = _VCPU_NAME.fullmatch(untrusted_name)
        if match is not None:
            found.append(VcpuThread(int(entry), untrusted_name, int(match.group(1))))
        elif untrusted_name == _SINGLE_THREAD_TCG:
            found.append(VcpuThread(int(entry), untrusted_name, None))
    return sorted(found, key=lambda thread: thread.tid)


def plan(pid: int, mode: Mode, vcpus: Sequence[VcpuThread]) -> list[Step]:
    """The cookies to create, in order (a pure function of its arguments): for ``vm`` and
    ``full`` first the whole process, then for ``full`` each vCPU thread on its own (later
    steps override earlier ones for the threads they name)."""
    if mode is Mode.OFF:
        return []
    steps = [Step(pid, SCOPE_THREAD_GROUP)]
    if mode is Mode.FULL:
        steps += [Step(thread.tid, SCOPE_THREAD) for thread in vcpus]
    return steps


# -- the system call ------------------------------------------------------------------------

Prctl = Callable[[int, int, int, int], int]
"""``(command, pid, scope, address) -> 0``; raises ``OSError`` with the errno."""

_libc: ctypes.CDLL | None = None


def prctl_sched_core(command: int, pid: int, scope: int, address: int = 0) -> int:
    """``prctl(PR_SCHED_CORE, command, pid, scope, address)``; ``OSError`` on failure."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                                ctypes.c_ulong]
        _libc.prctl.restype = ctypes.c_int
    if _libc.prctl(PR_SCHED_CORE, command, pid, scope, address) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"prctl(PR_SCHED_CORE, {command}, {pid}, {scope}): "
                            f"{os.strerror(code)}")
    return 0


def get_cookie(tid: int, call: Prctl = prctl_sched_core) -> int:
    """The core scheduling cookie of thread ``tid`` (0 for none; ``0`` is ``tid`` itself,
    i.e. the calling thread). The kernel gives a hash of the cookie: equal for threads that
    share one, different otherwise."""
    value = ctypes.c_uint64(0)
    call(PR_SCHED_CORE_GET, tid, SCOPE_THREAD, ctypes.addressof(value))
    return value.value


def unsupported_reason(call: Prctl = prctl_sched_core) -> str | None:
    """Why core scheduling cannot be used here (``UNSUPPORTED_REASONS``), or ``None`` when
    it can: asks for the calling thread's cookie, which changes nothing."""
    try:
        get_cookie(0, call)
    except OSError as exc:
        if exc.errno in UNSUPPORTED_REASONS:
            return UNSUPPORTED_REASONS[exc.errno]
        message = f"core scheduling probe failed: {exc.strerror}"
        raise SchedCoreError(exc.errno, message) from exc
    return None


def supported(call: Prctl = prctl_sched_core) -> bool:
    """Whether this kernel and CPU do core scheduling."""
    return unsupported_reason(call) is None


def apply(pid: int, mode: Mode | str, *, proc_root: Path = PROC,
          call: Prctl = prctl_sched_core) -> Result:
    """Give VMM ``pid``'s threads their cookies for ``mode`` (see the module docstring).

    Call it once the VMM has created its vCPUs (for QEMU: when its QMP socket answers) and
    with QEMU's ``-name …,debug-threads=on`` (without it no vCPU is found by name and
    ``full`` falls back to one cookie for the VM, which the result's ``note`` says).
    Needs the right to ``ptrace``-read the VMM (root, or the same uid).

    Returns a ``Result``; ``result.unsupported`` says why nothing was done where the kernel
    or CPU lacks core scheduling. Raises ``FileNotFoundError`` if the process is gone,
    ``SchedCoreError`` if the kernel refuses for another reason (``EPERM``, ``ENOMEM``).
    """
    mode = mode_from_config(mode) if isinstance(mode, str) else mode
    if mode is Mode.OFF:
        return Result(pid, mode)
    vcpus = tuple(vcpu_threads(pid, proc_root))
    process_cookie = False
    vcpu_cookies: list[int] = []
    skipped: list[int] = []
    for step in plan(pid, mode, vcpus):
        try:
            call(PR_SCHED_CORE_CREATE, step.target, step.scope, 0)
        except OSError as exc:
            if exc.errno in UNSUPPORTED_REASONS:
                return Result(pid, mode, vcpus, unsupported=UNSUPPORTED_REASONS[exc.errno])
            if exc.errno == errno.ESRCH:
                if step.scope == SCOPE_THREAD_GROUP:
                    message = f"VMM process {pid} is gone"
                    raise FileNotFoundError(errno.ENOENT, message) from exc
                skipped.append(step.target)
                continue
            raise SchedCoreError(exc.errno, f"core scheduling cookie for "
                                 f"{'process' if step.scope else 'thread'} {step.target} "
                                 f"of VMM {pid}: {exc.strerror}") from exc
        if step.scope == SCOPE_THREAD_GROUP:
            process_cookie = True
        else:
            vcpu_cookies.append(step.target)
    note = None
    if mode is Mode.FULL and not vcpus:
        note = ("no vCPU threads found by name (is QEMU started with -name …,debug-threads=on?)"
                "; the VM has one cookie, as with \"vm\"")
    return Result(pid, mode, vcpus, process_cookie, tuple(vcpu_cookies), note=note,
                  skipped=tuple(skipped))

