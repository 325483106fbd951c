"""virtiofsd's user namespace for real, without a VM: what the namespace's root can and cannot
do to a host directory (through a shell run by the launcher in virtiofsd's place), the share
mounted from vmsilod's descriptor (locked read-only, nosuid, nodev; no descriptor of the
host's tree left to virtiofsd), and the real virtiofsd started, re-adopted by its recorded
identity and stopped by the runner."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmsilo.config.model import SharedDirectory, Virtiofs
from vmsilo.errors import UserError
from vmsilo.host.ids import block_start, guest_id_map
from vmsilo.host.procid import ProcessIdentity
from vmsilo.host.safefs import Dir
from vmsilo.shares import runner, virtiofsd
from vmsilo.shares.plan import Share
from vmsilo.shares.runner import CAPABILITIES, IdMaps, launch_command
from vmsilo.shares.source import open_source
from vmsilo.shares.userns import SOURCE

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="user-namespace maps need root")

VM = 7
B = block_start(VM)
NOBODY = 65534
MAPS = IdMaps(uids=guest_id_map(VM, NOBODY), gids=guest_id_map(VM, NOBODY))


@pytest.fixture
def shared() -> Iterator[Path]:
    """A shared directory as the tests' desktop user (`nobody`) owns one, on a path any id
    may search (pytest's own temporary directories are root's alone)."""
    top = Path(tempfile.mkdtemp(prefix="vmsilo-share-", dir="/var/tmp"))
    top.chmod(0o755)
    directory = top / "share"
    directory.mkdir(mode=0o755)
    os.chown(directory, NOBODY, NOBODY)
    try:
        yield directory
    finally:
        shutil.rmtree(top)


def share_of(directory: Path, readonly: bool = False) -> Share:
    options = SharedDirectory(path=str(directory), readonly=readonly)
    return Share("docs", directory, "/mnt/docs", options, "vms.t.sharedDirectories.docs")


def in_namespace(share: Share, script: str) -> subprocess.CompletedProcess[str]:
    """``script`` run by the launcher in virtiofsd's place; ``$1`` is the share's path there
    (the one virtiofsd is given)."""
    with open_source(share.source, share.option_path) as source:
        argv = launch_command(share, MAPS, ["/bin/sh", "-c", script, "sh", SOURCE],
                              source_fd=source.fd)  # fmt: skip
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False,
                              pass_fds=[source.fd])  # fmt: skip


def test_guest_root_cannot_make_root_setuid_root_or_device_files(shared: Path) -> None:
    (shared / "hosts-root-file").write_text("root's\n")  # root-owned, 0644
    script = """
        cd "$1"
        id -u; cat /proc/self/uid_map | tr -s ' ' | sed 's/^ //'
        grep CapBnd /proc/self/status
        cp /bin/sh s; chown 0:0 s; chmod 4755 s
        mknod -m 666 disk b 254 0 2>/dev/null && echo MKNOD-WORKED
        chown 0:0 hosts-root-file 2>/dev/null && echo CHOWN-WORKED
        echo more >> hosts-root-file 2>/dev/null && echo WRITE-WORKED
        setpriv --reuid=1000 --regid=1000 --clear-groups touch users-file
        setpriv --reuid=65535 --regid=65535 --clear-groups true 2>/dev/null && echo VMM-ID-WORKED
        true
    """
    result = in_namespace(share_of(shared), script)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:4] == ["0", f"0 {B} 1000", f"1000 {NOBODY} 1", f"1001 {B + 1001} 64534"]
    wanted = sum(1 << runner_cap for runner_cap in _cap_numbers())
    assert lines[4].split()[1] == f"{wanted:016x}"
    assert not any("WORKED" in line for line in lines), lines
    setuid = (shared / "s").stat()
    assert (setuid.st_uid, setuid.st_gid) == (B, B)  # guest root is the VM's own id
    assert setuid.st_mode & stat.S_ISUID
    assert not (shared / "disk").exists()
    assert (shared / "hosts-root-file").read_text() == "root's\n"
    users = (shared / "users-file").stat()
    assert (users.st_uid, users.st_gid) == (NOBODY, NOBODY)  # guest user is the desktop user
    for path in shared.iterdir():
        st = path.lstat()
        if path.name != "hosts-root-file":
            assert st.st_uid != 0 and st.st_gid != 0, path
        assert not stat.S_ISBLK(st.st_mode) and not stat.S_ISCHR(st.st_mode)


def _cap_numbers() -> list[int]:
    from vmsilo.shares.userns import CAPABILITY_NUMBERS

    return [CAPABILITY_NUMBERS[name] for name in CAPABILITIES]


def test_a_readonly_share_is_readonly_even_for_the_namespaces_root(shared: Path) -> None:
    script = """
        touch "$1/new"
        mount -o remount,rw "$1" 2>/dev/null && echo REMOUNT-WORKED
        mount -o remount,bind,rw "$1" 2>/dev/null && echo BIND-REMOUNT-WORKED
        umount -l "$1" 2>/dev/null; umount --no-canonicalize -l "$1" 2>/dev/null
        touch "$1/new2"; true
    """
    result = in_namespace(share_of(shared, readonly=True), script)
    assert result.returncode == 0, result.stderr
    assert "WORKED" not in result.stdout, result.stdout
    assert result.stderr.count("Read-only file system") == 2, result.stderr
    assert list(shared.iterdir()) == []


def test_the_share_is_a_locked_nosuid_nodev_mount_and_nothing_else_of_the_host_is_held(
    shared: Path,
) -> None:
    (shared / "marker").write_text("the share\n")
    script = """
        grep " $1 " /proc/self/mountinfo | cut -d' ' -f6
        mount -o remount,bind,suid,dev "$1" 2>/dev/null && echo SUID-REMOUNT-WORKED
        umount -l "$1" 2>/dev/null; umount --no-canonicalize -l "$1" 2>/dev/null
        cat "$1/marker"
        ls /proc/self/fd
    """
    result = in_namespace(share_of(shared), script)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert set(lines[0].split(",")) >= {"rw", "nosuid", "nodev"}, lines
    assert "WORKED" not in result.stdout, lines
    assert lines[1] == "the share", lines  # still mounted: the namespace's root cannot unmount
    # Only the shell's standard streams (and ls's own directory): vmsilod's O_PATH
    # descriptor of the share, from which ".." would climb into the host's tree, is closed.
    assert set(lines[2:]) <= {"0", "1", "2", "3"}, lines


def test_the_launcher_lives_in_its_own_namespaces(shared: Path) -> None:
    script = "for n in user mnt ipc uts net; do readlink /proc/self/ns/$n; done"
    result = in_namespace(share_of(shared), script)
    ours = [os.readlink(f"/proc/self/ns/{n}") for n in ("user", "mnt", "ipc", "uts", "net")]
    theirs = result.stdout.split()
    assert [a != b for a, b in zip(ours, theirs, strict=True)] == [True] * 4 + [False]


def test_a_failing_launch_says_why(shared: Path) -> None:
    share = share_of(shared)
    with open_source(share.source, share.option_path) as source:
        argv = launch_command(share, MAPS, ["/nonexistent/virtiofsd"], source_fd=source.fd)
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False,
                                pass_fds=[source.fd])  # fmt: skip
    assert result.returncode == 1
    assert "vmsilo-userns: " in result.stderr and "No such file" in result.stderr


# -- the real virtiofsd ------------------------------------------------------------------------


@pytest.fixture
def found() -> virtiofsd.Virtiofsd:
    result = virtiofsd.find()
    if result is None:
        pytest.skip("no virtiofsd installed")
    return result


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Dir]:
    with Dir.secure(tmp_path / "run" / "t") as directory:
        yield directory


def test_virtiofsd_starts_as_the_vms_ids_is_adopted_by_identity_and_stopped(
    found: virtiofsd.Virtiofsd, runtime: Dir, shared: Path, tmp_path: Path
) -> None:
    log = tmp_path / "virtiofsd.log"
    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        running = runner.start(found, share_of(shared), Virtiofs(), MAPS, runtime, log_fd, log)
    finally:
        os.close(log_fd)
    directory = runtime.path / "virtiofs-docs"
    try:
        st = directory.stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o700)
        assert stat.S_ISSOCK((directory / "socket").stat().st_mode)
        status = Path(f"/proc/{running.pid}/status").read_text()
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert uid_line.split()[1:] == [str(B)] * 4  # root inside is the VM's id outside
        assert running.identity.exe == os.path.realpath(found.path)
        record = json.loads((directory / runner.RECORD).read_text())
        assert record == running.identity.to_json()
        with runtime.sub("virtiofs-docs", create=False) as sub:
            connection = sub.connect_unix("socket")  # vmsilod can reach it
        with connection:
            # Once connected, virtiofsd sets up its own sandbox inside our namespace: a child
            # in new PID, network and mount namespaces whose root is the share.
            sandboxed = _child_of(running.pid)
            for kind in ("user", "ipc", "uts"):  # the launcher's
                assert _ns(sandboxed, kind) == _ns(running.pid, kind) != _ns(os.getpid(), kind)
            assert _ns(sandboxed, "pid") != _ns(running.pid, "pid")  # its own, and these:
            assert _ns(sandboxed, "net") != _ns(os.getpid(), "net")  # (the launcher has none)
            assert _ns(sandboxed, "mnt") != _ns(os.getpid(), "mnt")
            assert os.path.samestat(os.stat(f"/proc/{sandboxed}/root"), shared.stat())

            # (Still connected: virtiofsd ends by itself once its VMM disconnects.)
            adopted = runner.adopt(runtime, "docs")
            assert adopted is not None and adopted.identity == running.identity
            assert adopted.process is None
            # A record that names another start of that pid is not adopted.
            forged = {**record, "start": record["start"] + 1}
            (directory / runner.RECORD).write_text(json.dumps(forged))
            assert runner.adopt(runtime, "docs") is None
            (directory / runner.RECORD).write_text(json.dumps({**record, "exe": sys.executable}))
            assert runner.adopt(runtime, "docs") is None

        runner.stop(adopted)
        assert not ProcessIdentity(running.pid, record["start"], record["exe"]).alive()
        assert not directory.exists()
        assert running.process is not None
        running.process.wait(5)  # our own child: reaped here
    finally:
        runner.stop(running)


def _child_of(pid: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise AssertionError(f"virtiofsd {pid} set up no sandbox within {timeout} s")


def _ns(pid: int, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def test_a_share_virtiofsd_could_not_read_is_refused_up_front(
    found: virtiofsd.Virtiofsd, runtime: Dir, tmp_path: Path
) -> None:
    hidden = tmp_path / "docs"
    hidden.mkdir(mode=0o700)  # root's alone
    with pytest.raises(UserError, match=r"vms\.t\.sharedDirectories\.docs: virtiofsd runs as "
                                        r"the VM's unprivileged ids and cannot read .*0700.*"
                                        r"chmod o\+rx"):
        runner.start(found, share_of(hidden), Virtiofs(), MAPS, runtime, None, tmp_path / "l")
    assert not (runtime.path / "virtiofs-docs").exists()


def test_the_folders_above_a_share_need_not_be_searchable(
    found: virtiofsd.Virtiofsd, runtime: Dir, tmp_path: Path
) -> None:
    """virtiofsd gets the directory as a mount, not by path: a share of the user's in a
    folder only root may pass (pytest's tmp_path is root's, mode 0700) is served."""
    docs = tmp_path / "private" / "docs"
    docs.mkdir(parents=True)
    (tmp_path / "private").chmod(0o700)
    os.chown(docs, NOBODY, NOBODY)
    running = runner.start(found, share_of(docs), Virtiofs(), MAPS, runtime, None,
                           tmp_path / "l")  # fmt: skip
    try:
        assert running.process is not None and running.process.poll() is None
    finally:
        runner.stop(running)
