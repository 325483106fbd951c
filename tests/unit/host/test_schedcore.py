"""schedulerIsolation's decisions, on fake /proc trees and a recording stand-in for the
prctl call: which threads are vCPUs, which cookies each mode creates and in what order, and
what the result says when the kernel cannot (the real call is exercised by
tests/integration/host/test_schedcore_qemu.py here and tests/system/test_schedcore.py in a
guest)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from vmsilo.host import schedcore
from vmsilo.host.schedcore import (
    PR_SCHED_CORE_CREATE,
    PR_SCHED_CORE_GET,
    SCOPE_THREAD,
    SCOPE_THREAD_GROUP,
    Mode,
    Step,
    VcpuThread,
)

PID = 4242


def fake_proc(root: Path, pid: int, threads: dict[int, str | bytes]) -> Path:
    """``root/<pid>/task/<tid>/comm`` for each thread, as the kernel writes it (a newline
    after the name)."""
    for tid, name in threads.items():
        task = root / str(pid) / "task" / str(tid)
        task.mkdir(parents=True)
        raw = name if isinstance(name, bytes) else name.encode() + b"\n"
        (task / "comm").write_bytes(raw)
    return root


QEMU_KVM = {PID: "qemu-system-x86", PID + 1: "call_rcu", PID + 2: "CPU 0/KVM",
            PID + 3: "CPU 1/KVM", PID + 4: "worker", PID + 5: "CPU 2/KVM"}


class Recorder:
    """Stands in for prctl_sched_core: records each call, fails with ``errors[target]``."""

    def __init__(self, errors: dict[int, int] | None = None, probe_error: int = 0) -> None:
        self.calls: list[tuple[int, int, int]] = []
        self.errors = errors or {}
        self.probe_error = probe_error

    def __call__(self, command: int, pid: int, scope: int, address: int = 0) -> int:
        if command == PR_SCHED_CORE_GET and self.probe_error:
            raise OSError(self.probe_error, "probe")
        self.calls.append((command, pid, scope))
        if pid in self.errors:
            raise OSError(self.errors[pid], "refused")
        return 0


def test_vcpu_threads_are_found_by_qemu_names(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, PID, QEMU_KVM)
    found = schedcore.vcpu_threads(PID, proc)
    assert found == [VcpuThread(PID + 2, "CPU 0/KVM", 0), VcpuThread(PID + 3, "CPU 1/KVM", 1),
                     VcpuThread(PID + 5, "CPU 2/KVM", 2)]


def test_tcg_names_multi_and_single_threaded(tmp_path: Path) -> None:
    multi = fake_proc(tmp_path / "a", PID, {PID: "qemu-system-x86", PID + 7: "CPU 0/TCG",
                                            PID + 8: "CPU 1/TCG"})
    assert [t.index for t in schedcore.vcpu_threads(PID, multi)] == [0, 1]
    single = fake_proc(tmp_path / "b", PID, {PID: "qemu-system-x86", PID + 2: "ALL CPUs/TCG"})
    assert schedcore.vcpu_threads(PID, single) == [VcpuThread(PID + 2, "ALL CPUs/TCG", None)]


@pytest.mark.parametrize("name", [
    "CPU 0/KVM x", " CPU 0/KVM", "CPU x/KVM", "CPU 0/kvm", "CPU 0", "CPU 12345/KVM",
    "ALL CPUs/KVM", "", "CPU 0/KVM\n",  # the kernel adds one newline: a second is the name's
])
def test_other_names_are_not_vcpus(tmp_path: Path, name: str) -> None:
    proc = fake_proc(tmp_path, PID, {PID: "qemu-system-x86", PID + 1: name})
    assert schedcore.vcpu_threads(PID, proc) == []


def test_undecodable_names_and_stray_entries_are_ignored(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, PID, {PID + 1: b"\xff\xfe\n", PID + 2: "CPU 0/KVM"})
    (proc / str(PID) / "task" / "not-a-tid").mkdir()
    assert [t.tid for t in schedcore.vcpu_threads(PID, proc)] == [PID + 2]


def test_a_thread_that_ends_while_listed_is_left_out(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, PID, {PID + 2: "CPU 0/KVM"})
    (proc / str(PID) / "task" / str(PID + 3)).mkdir()  # listed, but its comm is gone
    assert [t.tid for t in schedcore.vcpu_threads(PID, proc)] == [PID + 2]


def test_a_missing_process_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        schedcore.vcpu_threads(PID, tmp_path)


def test_plan_per_mode() -> None:
    vcpus = [VcpuThread(11, "CPU 0/KVM", 0), VcpuThread(12, "CPU 1/KVM", 1)]
    assert schedcore.plan(PID, Mode.OFF, vcpus) == []
    assert schedcore.plan(PID, Mode.VM, vcpus) == [Step(PID, SCOPE_THREAD_GROUP)]
    # The process-wide cookie first: the per-thread ones then replace it on the vCPUs only.
    assert schedcore.plan(PID, Mode.FULL, vcpus) == [
        Step(PID, SCOPE_THREAD_GROUP), Step(11, SCOPE_THREAD), Step(12, SCOPE_THREAD)]
    assert schedcore.plan(PID, Mode.FULL, []) == [Step(PID, SCOPE_THREAD_GROUP)]


def test_apply_full_creates_a_cookie_per_vcpu(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, PID, QEMU_KVM)
    call = Recorder()
    result = schedcore.apply(PID, "full", proc_root=proc, call=call)
    assert call.calls == [(PR_SCHED_CORE_CREATE, PID, SCOPE_THREAD_GROUP),
                          (PR_SCHED_CORE_CREATE, PID + 2, SCOPE_THREAD),
                          (PR_SCHED_CORE_CREATE, PID + 3, SCOPE_THREAD),
                          (PR_SCHED_CORE_CREATE, PID + 5, SCOPE_THREAD)]
    assert result.process_cookie
    assert result.vcpu_cookies == (PID + 2, PID + 3, PID + 5)
    assert result.unsupported is None and result.note is None
    assert result.describe() == ("core scheduling (full): VMM process 4242: one cookie; "
                                 "3 vCPU threads: a cookie each")


def test_apply_vm_creates_one_cookie_for_the_process(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, PID, QEMU_KVM)
    call = Recorder()
    result = schedcore.apply(PID, Mode.VM, proc_root=proc, call=call)
    assert call.calls == [(PR_SCHED_CORE_CREATE, PID, SCOPE_THREAD_GROUP)]
    assert result.process_cookie and result.vcpu_cookies == ()
    assert len(result.vcpus) == 3


def test_apply_off_does_nothing_not_even_look(tmp_path: Path) -> None:
    call = Recorder()
    result = schedcore.apply(PID, "off", proc_root=tmp_path, call=call)  # no such process
    assert call.calls == []
    assert result == schedcore.Result(PID, Mode.OFF)
    assert "off" in result.describe()


def test_full_without_named_vcpus_says_why(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, PID, {PID: "qemu-system-x86", PID + 1: "qemu-system-x86"})
    result = schedcore.apply(PID, Mode.FULL, proc_root=proc, call=Recorder())
    assert result.process_cookie and not result.vcpu_cookies
    assert result.note is not None and "debug-threads=on" in result.note


@pytest.mark.parametrize(("code", "words"), [(errno.EINVAL, "CONFIG_SCHED_CORE"),
                                             (errno.ENODEV, "no SMT")])
def test_missing_support_is_a_result_not_an_error(tmp_path: Path, code: int,
                                                  words: str) -> None:
    proc = fake_proc(tmp_path, PID, QEMU_KVM)
    result = schedcore.apply(PID, Mode.FULL, proc_root=proc, call=Recorder({PID: code}))
    assert result.unsupported is not None and words in result.unsupported
    assert not result.process_cookie and not result.vcpu_cookies
    assert "has no effect" in result.describe()
    assert schedcore.unsupported_reason(Recorder(probe_error=code)) == result.unsupported
    assert not schedcore.supported(Recorder(probe_error=code))
    assert schedcore.supported(Recorder())


def test_a_vcpu_gone_before_its_cookie_is_skipped(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, PID, QEMU_KVM)
    result = schedcore.apply(PID, Mode.FULL, proc_root=proc,
                             call=Recorder({PID + 3: errno.ESRCH}))
    assert result.vcpu_cookies == (PID + 2, PID + 5)
    assert result.skipped == (PID + 3,)


def test_a_vmm_gone_is_file_not_found(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, PID, QEMU_KVM)
    with pytest.raises(FileNotFoundError, match="4242 is gone"):
        schedcore.apply(PID, Mode.VM, proc_root=proc, call=Recorder({PID: errno.ESRCH}))


def test_other_refusals_are_errors_naming_the_thread(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, PID, QEMU_KVM)
    with pytest.raises(schedcore.SchedCoreError, match="thread 4245 of VMM 4242") as info:
        schedcore.apply(PID, Mode.FULL, proc_root=proc, call=Recorder({PID + 3: errno.EPERM}))
    assert info.value.errno == errno.EPERM
    with pytest.raises(schedcore.SchedCoreError):
        schedcore.unsupported_reason(Recorder(probe_error=errno.EPERM))


def test_config_values() -> None:
    assert [schedcore.mode_from_config(v) for v in ("full", "vm", "off")] == list(Mode)
    with pytest.raises(ValueError, match=r"""schedulerIsolation = 'FULL': use one of "full", """
                                         r'"vm", "off"'):
        schedcore.mode_from_config("FULL")


def test_get_cookie_passes_a_buffer_the_kernel_fills() -> None:
    import ctypes

    def kernel(command: int, pid: int, scope: int, address: int = 0) -> int:
        assert (command, pid, scope) == (PR_SCHED_CORE_GET, 7, SCOPE_THREAD)
        ctypes.c_uint64.from_address(address).value = 0xDEADBEEF
        return 0

    assert schedcore.get_cookie(7, kernel) == 0xDEADBEEF
