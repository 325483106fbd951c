"""The host side holds its boundary, tried as an attacker would with real VMs:

- the VMM of a running VM is jailed: its own uid and gid (neither root nor the desktop user),
  its own namespaces, no capabilities, no_new_privs, and from inside its namespaces as its uid
  it cannot open the desktop user's files or another VM's runtime directory;
- the desktop user (here `nobody`) plants links wherever an older vmsilod worked as root in
  directories it had given to that user (runtime dir entries, log names, the console socket,
  the overlay's directory); start, `vm-shell`, a vmsilod restart with re-adoption, and stop
  leave every root-owned canary outside vmsilo's directories as it was, and the user cannot
  plant anything while the VM runs.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import RunningDaemon
from vmsilo.host import ids

NOBODY = 65534

CONFIG = """
enable = true
user = "nobody"

[vms.target]
memory = 512
cpus = 1
sharedHome = false
gpu = false
sound.playback = false
"""


def _status_field(pid: int, field: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _as_vmm(pid: int, uid: int, *command: str) -> subprocess.CompletedProcess[bytes]:
    """Run ``command`` inside the VMM's namespaces as its uid: what an escape could do."""
    return subprocess.run(
        ["nsenter", "-t", str(pid), "-m", "-p", "-i", "-u", "-n", "--",
         "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", *command],
        capture_output=True, timeout=30, check=False)


def test_the_vmm_runs_jailed_as_its_own_uid(alpha: RunningDaemon, tmp_path: Path) -> None:
    row = alpha.status()["alpha"]
    pid = alpha.vmm_pid("alpha")
    assert row["pid"] == pid
    uid = ids.vmm_id(int(str(row["cid"])))
    assert _status_field(pid, "Uid").split() == [str(uid)] * 4
    assert _status_field(pid, "Gid").split() == [str(uid)] * 4
    assert _status_field(pid, "Groups") == ""
    assert uid not in (0, NOBODY)
    assert _status_field(pid, "NoNewPrivs") == "1"
    assert _status_field(pid, "CapEff") == "0000000000000000"
    assert _status_field(pid, "CapBnd") == "0000000000000000"
    assert "2" in _status_field(pid, "Seccomp")  # QEMU's own -sandbox filter
    daemon_pid = alpha.process.pid if alpha.process else os.getpid()
    for ns in ("mnt", "pid", "ipc", "uts", "net", "cgroup"):
        assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/{daemon_pid}/ns/{ns}")

    # The desktop user's files and another VM's runtime directory, as an escape would try.
    home = Path(tempfile.mkdtemp(prefix="vmsilo-home-", dir="/var/tmp"))
    try:
        os.chown(home, NOBODY, NOBODY)
        secret = home / "secret"
        secret.write_text("the user's\n")
        os.chown(secret, NOBODY, NOBODY)
        secret.chmod(0o644)
        home.chmod(0o755)  # even readable by all: the jail does not show it
        assert subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}",
                               "--clear-groups", "cat", str(secret)],
                              capture_output=True, check=False).returncode == 0
        escaped = _as_vmm(pid, uid, "cat", str(secret))
        assert escaped.returncode != 0 and b"No such file or directory" in escaped.stderr
    finally:
        subprocess.run(["rm", "-rf", str(home)], check=False)
    runtime = alpha.root / "run" / "alpha"
    for target in (runtime / "vmm.sock", runtime / "launch.json", alpha.root / "state"):
        escaped = _as_vmm(pid, uid, "ls", str(target))
        assert escaped.returncode != 0, target
    # On the host too, vmsilod's directories are root's alone.
    assert stat.S_IMODE(runtime.stat().st_mode) == 0o700 and runtime.stat().st_uid == 0
    denied = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                             "ls", str(runtime)], capture_output=True, check=False)
    assert b"Permission denied" in denied.stderr


@pytest.fixture
def canaries() -> Iterator[Path]:
    where = Path(tempfile.mkdtemp(prefix="vmsilo-canary-", dir="/var/tmp"))
    where.chmod(0o755)
    (where / "file").write_text("root's\n")
    (where / "dir").mkdir()
    (where / "dir" / "keep").write_text("keep\n")
    yield where
    subprocess.run(["rm", "-rf", str(where)], check=False)


def _snapshot(where: Path) -> dict[str, tuple[int, int, int, bytes | None]]:
    found = {}
    for path in sorted(where.rglob("*")):
        st = path.lstat()
        content = path.read_bytes() if path.is_file() else None
        found[str(path)] = (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), content)
    return found


def _plant(path: Path, target: Path) -> None:
    path.symlink_to(target)
    os.lchown(path, NOBODY, NOBODY)


def _users_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, NOBODY, NOBODY)
    path.chmod(0o755)
    return path


def test_links_planted_where_root_used_to_work_are_never_followed(
        test_image: None, canaries: Path) -> None:
    daemon = RunningDaemon(CONFIG)
    daemon.start()
    try:
        # What an older vmsilod gave the desktop user, planted full of links by that user.
        runtime = _users_dir(daemon.root / "run" / "target")
        for name in ("launch.json", "network.json", "processes.json", "cid", "vmm.pid",
                     "console.sock", "vmm.sock", "channel.sock"):
            _plant(runtime / name, canaries / "file")
        for name in ("wayland", "virtiofs-vmsilo-home"):
            _plant(runtime / name, canaries / "dir")
        logs = _users_dir(daemon.root / "state" / "logs" / "target")
        for name in ("console.log", "console.log.1", "vmm.log", "vmm.log.1"):
            _plant(logs / name, canaries / "file")
        state = _users_dir(daemon.root / "state" / "target")
        _plant(state / "overlay.raw", canaries / "file")
        before = _snapshot(canaries)

        daemon.restart_daemon_only()  # re-adoption meets the planted runtime directory
        assert "VM target: not re-adopting" in daemon.log()
        started = daemon.cli("vm-start", "target")
        assert started.returncode == 0, started.stderr.decode() + daemon.log()
        for directory in (runtime, logs, state):  # reclaimed: root's now
            st = directory.lstat()
            assert st.st_uid == 0 and stat.S_ISDIR(st.st_mode), directory
        assert json.loads((runtime / "processes.json").read_text())["vmm"]["pid"] > 1
        # The desktop user can plant nothing while the VM runs.
        for directory in (runtime, logs, state):
            attempt = subprocess.run(
                ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                 "ln", "-s", str(canaries / "file"), str(directory / "planted")],
                capture_output=True, check=False)
            assert attempt.returncode != 0, directory
        shell = daemon.cli("vm-shell", "target", input=b"\nhostname\n", timeout=60)
        assert shell.returncode == 0 and b"target" in shell.stdout, shell.stderr
        ran = daemon.cli("vm-run", "target", "--", "echo", "inside")
        assert ran.stdout == b"inside\n", ran.stderr
        daemon.restart_daemon_only()
        assert "re-adopted VMM pid" in daemon.log()
        assert daemon.cli("vm-run", "target", "--", "true").returncode == 0
        assert daemon.cli("vm-stop", "target").returncode == 0
        assert _snapshot(canaries) == before
        assert (canaries / "file").read_text() == "root's\n"
    finally:
        daemon.stop()
