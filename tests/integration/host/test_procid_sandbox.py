"""Process identities (a pid is adopted only if start time and executable still match) and
the bubblewrap jail, with real processes."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

import pytest

from vmsilo.host.procid import ProcessIdentity, kill_if_alive
from vmsilo.host.sandbox import Sandbox, read_child_pid

JAIL_ID = 0x5003FFFF  # the VMM id of VM 3 (host/ids.py)


def test_an_identity_names_one_process_and_a_wrong_one_signals_nothing() -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        identity = ProcessIdentity.of(sleeper.pid)
        assert identity is not None and identity.alive()
        assert identity.exe == "/usr/bin/sleep"
        forged = dataclasses.replace(identity, start=identity.start + 1)
        assert not forged.alive() and forged.pidfd() is None
        assert not kill_if_alive(forged)
        assert sleeper.poll() is None  # a wrong identity never reaches the process
        assert not kill_if_alive(dataclasses.replace(identity, exe="/usr/bin/qemu"))
        assert kill_if_alive(identity)
        assert sleeper.wait(5) == -9
        assert not identity.alive()
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize("data", [
    None, [], {"pid": 5}, {"pid": "5", "start": 1, "exe": "/x"},
    {"pid": 1, "start": 1, "exe": "/sbin/init"}, {"pid": 5, "start": -1, "exe": "/x"},
    {"pid": 5, "start": 1, "exe": "relative"}, {"pid": True, "start": 1, "exe": "/x"},
    {"pid": 5, "start": 1, "exe": "/x", "extra": 1},
])
def test_records_of_any_other_shape_are_refused(data: object) -> None:
    with pytest.raises(ValueError):
        ProcessIdentity.from_json(data)


@pytest.mark.skipif(os.geteuid() != 0, reason="the jail switches to another uid")
def test_the_jail_runs_as_its_uid_without_privileges_in_its_own_namespaces(
        tmp_path: Path) -> None:
    visible = tmp_path / "visible"
    visible.write_text("bound\n")
    visible.chmod(0o644)
    tmp_path.chmod(0o755)
    sandbox = Sandbox(uid=JAIL_ID, gid=JAIL_ID, ro_binds=(visible,))
    probe = (
        "id -u; id -g; id -G; grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; "
        f"cat {visible}; ls /root /home 2>&1; ls /; touch {visible} 2>&1; "
        "cat /proc/1/cmdline | tr '\\0' ' '; echo; ip -o link 2>/dev/null | wc -l")
    info_read, info_write = os.pipe()
    process = subprocess.Popen(sandbox.argv(["sh", "-c", probe], info_fd=info_write),
                               pass_fds=[info_write], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    os.close(info_write)
    pid = read_child_pid(info_read)
    namespaces = {ns: os.readlink(f"/proc/{pid}/ns/{ns}") for ns in
                  ("mnt", "pid", "ipc", "uts", "net")}
    out, _ = process.communicate(timeout=30)
    text = out.decode()
    assert process.returncode == 0, text
    lines = text.splitlines()
    assert lines[:3] == [str(JAIL_ID)] * 3  # uid, gid, and no other group
    assert "CapEff:\t0000000000000000" in text and "CapBnd:\t0000000000000000" in text
    assert "NoNewPrivs:\t1" in text
    assert "bound" in lines
    assert "ls: cannot access '/root': No such file or directory" in text
    assert "touch: cannot touch" in text  # the bound file cannot be written
    assert lines[-2].startswith("sh -c ")  # the command is the namespace's pid 1
    for ns, inode in namespaces.items():
        assert inode != os.readlink(f"/proc/self/ns/{ns}"), ns
