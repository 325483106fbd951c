"""Looking into a running sandboxed helper from outside, as root: its identity and
privileges (``/proc/<pid>/status``), its namespaces, and what it can see (a probe command
run in its namespaces, as its user)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from vmsilo.host.interpreter import runtime_binds

NAMESPACES = ("mnt", "pid", "net", "ipc", "uts")


def status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def namespaces(pid: int) -> dict[str, str]:
    return {ns: os.readlink(f"/proc/{pid}/ns/{ns}") for ns in NAMESPACES}


def sandboxed_pids(module: str, vm: str) -> list[int]:
    """Host pids of the Python processes running ``python -m <module> --vm <vm>`` (not the
    bubblewrap, prlimit or setpriv that started them)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        command = argv[argv.index(b"-m"):] if b"-m" in argv else []
        if (command[1:2] == [module.encode()] and b"--vm" in command
                and command[command.index(b"--vm") + 1] == vm.encode()
                and b"bwrap" not in argv[0]):
            found.append(int(entry.name))
    return found


def outside_the_runtime(directory: Path) -> list[Path]:
    """The entries of ``directory`` on the host that hold nothing a helper's interpreter needs
    (``vmsilo.host.interpreter.runtime_binds``): none of them may be visible in a sandbox. (The
    suite's interpreter may live below /root: that one part of /root is shown, read-only.)"""
    needed = runtime_binds()
    return [entry for entry in directory.iterdir()
            if not any(entry == bind or entry in bind.parents for bind in needed)]


def probe(pid: int, uid: int, gid: int, script: str) -> subprocess.CompletedProcess[str]:
    """Run ``sh -c script`` in the namespaces of ``pid`` (mount, PID, network, IPC, UTS) as
    ``uid``/``gid`` with no capabilities: what the sandboxed helper itself could do."""
    return subprocess.run(
        ["nsenter", f"--target={pid}", "--mount", "--pid", "--net", "--ipc", "--uts", "--",
         "setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
         "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--",
         "/bin/sh", "-c", script],
        capture_output=True, text=True, timeout=30, check=False)


def broker_fd(pid: int) -> int:
    """A copy of the broker descriptor of the helper ``pid`` (``pidfd_getfd(2)``, which root
    may use on any process): what a helper taken over by a guest could send on."""
    import ctypes

    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    target = int(argv[argv.index(b"--broker-fd") + 1])
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        fd = libc.syscall(SYS_PIDFD_GETFD, pidfd, target, 0)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "pidfd_getfd")
        return int(fd)
    finally:
        os.close(pidfd)


SYS_PIDFD_GETFD = 438  # the same number on every architecture (asm-generic)
