"""schedulerIsolation in a real guest kernel (issue 14, item 4): this host's kernel lacks core
scheduling, so the module runs inside the shared `alpha` VM as root, sent as source over
`vm-run alpha -- python3 -`. There a stand-in VMM (a process whose threads name themselves
`CPU 0/KVM` and `CPU 1/KVM` with PR_SET_NAME, as QEMU's do) gets each mode, and the cookies
are read back with PR_SCHED_CORE_GET: full -> distinct non-zero cookies, vm -> one shared
non-zero cookie, off -> none.

Where the guest kernel cannot (CONFIG_SCHED_CORE not set: EINVAL; or no SMT in the VM's CPU
topology: ENODEV) the read-back test is skipped with the evidence (the kernel's config line
and SMT state), and the other tests check that the module found the threads and reported
exactly that reason, instead of pretending."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import RunningDaemon
from vmsilo.host import schedcore

DRIVER = textwrap.dedent("""
    import json as _json
    import os as _os
    import platform as _platform
    import threading as _threading

    PR_SET_NAME = 15
    VCPU_NAMES = ["CPU 0/KVM", "CPU 1/KVM"]


    def fake_vmm():
        # A child process with two threads that name themselves like QEMU's vCPU threads;
        # returns its pid and the threads' tids once they are named.
        ready_r, ready_w = _os.pipe()
        pid = _os.fork()
        if pid == 0:
            libc = ctypes.CDLL(None)
            stop = _threading.Event()
            tids = []

            def vcpu(name):
                libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()), 0, 0, 0)
                tids.append(_threading.get_native_id())
                if len(tids) == len(VCPU_NAMES):
                    _os.write(ready_w, _json.dumps(tids).encode())
                stop.wait()

            for name in VCPU_NAMES:
                _threading.Thread(target=vcpu, args=(name,), daemon=True).start()
            _threading.Event().wait()
        _os.close(ready_w)
        tids = _json.loads(_os.read(ready_r, 1000))
        _os.close(ready_r)
        return pid, tids


    def cookie(tid):
        try:
            return get_cookie(tid)
        except OSError as exc:
            return f"error {exc.errno}"


    def config_line():
        try:
            with open(f"/boot/config-{_platform.release()}") as config:
                for line in config:
                    if "CONFIG_SCHED_CORE" in line:
                        return line.strip()
        except OSError as exc:
            return f"no kernel config: {exc}"
        return "CONFIG_SCHED_CORE absent from the config"


    def smt():
        try:
            with open("/sys/devices/system/cpu/smt/active") as active:
                return active.read().strip()
        except OSError:
            return "unknown"


    report = {"kernel": _platform.release(), "config": config_line(), "smt_active": smt(),
              "unsupported": unsupported_reason(), "modes": {}}
    for mode in ("full", "vm", "off"):
        pid, tids = fake_vmm()
        try:
            result = apply(pid, mode)
            report["modes"][mode] = {
                "pid": pid, "tids": tids,
                "found": [[t.tid, t.untrusted_name] for t in result.vcpus],
                "unsupported": result.unsupported,
                "process_cookie": result.process_cookie,
                "vcpu_cookies": list(result.vcpu_cookies),
                "describe": result.describe(),
                "main_cookie": cookie(pid), "cookies": [cookie(tid) for tid in tids],
            }
        finally:
            _os.kill(pid, 9)
            _os.waitpid(pid, 0)
    print(_json.dumps(report))
""")


@pytest.fixture(scope="module")
def guest_report(alpha: RunningDaemon) -> dict[str, Any]:
    source = Path(schedcore.__file__).read_text() + "\n" + DRIVER
    result = alpha.cli("vm-run", "-u", "root", "alpha", "--", "python3", "-",
                       input=source.encode())
    assert result.returncode == 0, result.stderr.decode()
    report: dict[str, Any] = json.loads(result.stdout)
    print(json.dumps(report, indent=1))
    return report


def test_the_guest_finds_the_vcpu_threads(guest_report: dict[str, Any]) -> None:
    for mode in ("full", "vm"):
        run = guest_report["modes"][mode]
        assert run["found"] == [[tid, f"CPU {i}/KVM"] for i, tid in enumerate(run["tids"])]


def test_missing_support_is_reported_with_its_real_reason(
        guest_report: dict[str, Any]) -> None:
    reason = guest_report["unsupported"]
    if guest_report["config"] == "# CONFIG_SCHED_CORE is not set":
        assert reason == schedcore.UNSUPPORTED_REASONS[22]  # EINVAL
    elif guest_report["smt_active"] == "0":
        assert reason == schedcore.UNSUPPORTED_REASONS[19]  # ENODEV
    else:
        assert reason is None
    for mode in ("full", "vm"):
        run = guest_report["modes"][mode]
        assert run["unsupported"] == reason
        if reason is not None:
            assert not run["process_cookie"] and not run["vcpu_cookies"]
            assert "has no effect" in run["describe"]
    assert guest_report["modes"]["off"]["describe"].startswith("core scheduling off")


def test_cookies_read_back_per_mode(guest_report: dict[str, Any]) -> None:
    if guest_report["unsupported"] is not None:
        pytest.skip(f"guest kernel {guest_report['kernel']} cannot do core scheduling "
                    f"({guest_report['unsupported']}; config: {guest_report['config']}; "
                    f"SMT active: {guest_report['smt_active']}): no cookie to read back")
    full, vm, off = (guest_report["modes"][mode] for mode in ("full", "vm", "off"))
    assert full["main_cookie"] != 0 and all(full["cookies"])
    assert len({full["main_cookie"], *full["cookies"]}) == 3
    assert vm["main_cookie"] != 0 and set(vm["cookies"]) == {vm["main_cookie"]}
    assert off["main_cookie"] == 0 and off["cookies"] == [0, 0]
