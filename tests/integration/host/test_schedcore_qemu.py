"""schedulerIsolation against a real QEMU on this host: its vCPU threads are found by the
names QEMU gives them with ``debug-threads=on`` (multi- and single-threaded TCG), and ``apply``
either sets cookies (read back with PR_SCHED_CORE_GET) or, where this kernel lacks core
scheduling, says so and changes nothing. The cookies themselves are checked in a guest whose
kernel may have it: tests/system/test_schedcore.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest

from vmsilo.host import proc, schedcore
from vmsilo.host.schedcore import Mode

SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

pytestmark = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                                reason="qemu-system-x86_64 is not installed")


def start_qemu(accel: str, cpus: int, debug_threads: bool = True) -> subprocess.Popen[bytes]:
    """A paused QEMU (``-S``): its vCPU threads exist, nothing runs. With the seccomp
    sandbox vmsilod gives QEMU: the threads still name themselves under it."""
    name = "schedcore-test" + (",debug-threads=on" if debug_threads else "")
    qemu = proc.spawn(["qemu-system-x86_64", "-M", "microvm", "-accel", accel, "-smp",
                       str(cpus), "-m", "64", "-nodefaults", "-display", "none", "-S",
                       "-name", name, "-sandbox", SANDBOX])
    # The main thread, QEMU's RCU thread and the vCPU threads, which appear (and then name
    # themselves) during machine set-up: wait for the last one.
    vcpu_threads = 1 if "single" in accel else cpus
    deadline = time.monotonic() + 20
    while (len(os.listdir(f"/proc/{qemu.pid}/task")) < 2 + vcpu_threads
           or (debug_threads and len(schedcore.vcpu_threads(qemu.pid)) < vcpu_threads)):
        assert qemu.poll() is None and time.monotonic() < deadline, "QEMU did not come up"
        time.sleep(0.05)
    return qemu


@pytest.fixture
def qemu() -> Iterator[subprocess.Popen[bytes]]:
    process = start_qemu("tcg", 2)
    yield process
    proc.stop(process)


def test_multi_threaded_tcg_vcpus_are_found(qemu: subprocess.Popen[bytes]) -> None:
    found = schedcore.vcpu_threads(qemu.pid)
    assert [(t.untrusted_name, t.index) for t in found] == [("CPU 0/TCG", 0), ("CPU 1/TCG", 1)]
    assert all(t.tid != qemu.pid for t in found)


def test_single_threaded_tcg_has_one_vcpu_thread() -> None:
    qemu = start_qemu("tcg,thread=single", 2)
    try:
        assert [(t.untrusted_name, t.index) for t in schedcore.vcpu_threads(qemu.pid)] == [
            ("ALL CPUs/TCG", None)]
    finally:
        proc.stop(qemu)


def test_without_debug_threads_no_vcpu_has_a_name() -> None:
    qemu = start_qemu("tcg", 2, debug_threads=False)
    try:
        assert schedcore.vcpu_threads(qemu.pid) == []
    finally:
        proc.stop(qemu)


@pytest.mark.parametrize("mode", list(Mode))
def test_apply_sets_cookies_or_says_why_not(qemu: subprocess.Popen[bytes], mode: Mode) -> None:
    reason = schedcore.unsupported_reason()
    result = schedcore.apply(qemu.pid, mode)
    if mode is Mode.OFF:
        assert result == schedcore.Result(qemu.pid, Mode.OFF)
        return
    vcpus = [t.tid for t in result.vcpus]
    if reason is not None:
        assert result.unsupported == reason
        assert not result.process_cookie and not result.vcpu_cookies
        return
    main = schedcore.get_cookie(qemu.pid)
    cookies = [schedcore.get_cookie(tid) for tid in vcpus]
    assert main != 0 and all(cookies)
    if mode is Mode.FULL:
        assert len({main, *cookies}) == 1 + len(cookies)
    else:
        assert set(cookies) == {main}


def test_this_kernel_is_described() -> None:
    """Not an assertion about the machine: shows in the test log what ``apply`` found."""
    reason = schedcore.unsupported_reason()
    print(f"core scheduling here: {'available' if reason is None else reason}")
