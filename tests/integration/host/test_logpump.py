"""The log pump as vmsilod runs it: a real process started by ``logpump.start``, fed by real
writers (``yes``, a killed writer, a writer that outlives the process that started the pump,
QEMU's chardev log through ``-add-fd``), with links planted at the log's names and a disk
that fills up."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmsilo.host import logpump, proc
from vmsilo.host.safefs import Dir

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount, links as root)")
CAP = 64 * 1024


@pytest.fixture
def logs(tmp_path: Path) -> Iterator[Dir]:
    with Dir.secure(tmp_path / "logs") as directory:
        yield directory


def sizes(directory: Dir) -> dict[str, int]:
    return {name: directory.lstat(name).st_size for name in directory.names()}


def wait_gone(pid: int, timeout: float = 10) -> None:
    """Wait for a process that is not our child (it was reparented) to end."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
        except FileNotFoundError:
            return
        if state == "Z":  # ended; its new parent has not reaped it yet
            return
        assert time.monotonic() < deadline, f"process {pid} still runs after {timeout} s"
        time.sleep(0.05)


def flood(pump: logpump.LogPump, name: str, length: int) -> subprocess.CompletedProcess[bytes]:
    """``yes | head -c length`` into the log ``name``, then the pump's write end closed."""
    writer = proc.spawn(["sh", "-c", f"yes | head -c {length}"], stdout=pump.fd(name),
                        new_session=False)
    pump.close_write_ends()
    writer.wait(60)
    assert pump.process.wait(60) == 0
    return subprocess.CompletedProcess(writer.args, writer.returncode)


def test_a_flood_far_over_the_default_cap_keeps_two_capped_files(logs: Dir) -> None:
    length = 5 * logpump.CAP + 1000
    flood(logpump.start(logs, ["console.log"]), "console.log", length)
    assert sizes(logs) == {"console.log.1": logpump.CAP, "console.log": 1000}
    assert (logs.path / "console.log").read_bytes() == b"y\n" * 500


@ROOT_ONLY
def test_logs_readable_by_the_desktop_users_group(logs: Dir) -> None:
    flood(logpump.start(logs, ["console.log"], cap=CAP, mode=0o640, group=65534),
          "console.log", 3 * CAP)
    for name in ("console.log", "console.log.1"):
        info = logs.lstat(name)
        assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o640, 0, 65534)


def test_the_pump_ends_when_its_writer_is_killed(logs: Dir) -> None:
    pump = logpump.start(logs, ["vmm.log"], cap=CAP)
    writer = proc.spawn(["yes", "killed"], stdout=pump.fd("vmm.log"))
    pump.close_write_ends()
    time.sleep(0.5)
    writer.kill()
    writer.wait()
    assert pump.process.wait(10) == 0
    assert set(sizes(logs)) == {"vmm.log", "vmm.log.1"}
    assert all(size <= CAP for size in sizes(logs).values())
    assert b"\nkilled\nkilled\n" in (logs.path / "vmm.log.1").read_bytes()


@ROOT_ONLY
@pytest.mark.parametrize("rotate", [True, False])
def test_planted_links_are_never_followed(logs: Dir, tmp_path: Path, rotate: bool) -> None:
    canaries = {}
    for name in ("console.log", "console.log.1"):
        canary = tmp_path / f"canary-{name}"
        canary.write_bytes(b"precious\n")
        canaries[canary] = canary.stat()
        os.symlink(canary, logs.path / name)
    flood(logpump.start(logs, ["console.log"], cap=CAP, rotate_at_start=rotate), "console.log",
          10 * CAP)
    for canary, before in canaries.items():
        after = canary.stat()
        assert canary.read_bytes() == b"precious\n"
        assert (after.st_uid, after.st_mode, after.st_mtime_ns) == (
            before.st_uid, before.st_mode, before.st_mtime_ns)
    for name in ("console.log", "console.log.1"):
        assert stat.S_ISREG(logs.lstat(name).st_mode)
    assert sizes(logs) == {"console.log": CAP, "console.log.1": CAP}


def test_a_log_that_cannot_be_opened_fails_start_naming_it(logs: Dir) -> None:
    (logs.path / "console.log").mkdir()
    with pytest.raises(logpump.LogPumpError,
                       match=r"cannot write the logs console.log in .*: .*/console.log is a "
                             r"directory, not a log; remove it"):
        logpump.start(logs, ["console.log"])


PARENT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from vmsilo.host import logpump, proc
    from vmsilo.host.safefs import Dir

    pump = logpump.start(Dir.secure(Path(sys.argv[1])), ["helper.log"])
    writer = proc.spawn(["sh", "-c", "echo first; sleep 2; echo second"],
                        stdout=pump.fd("helper.log"))
    pump.close_write_ends()
    print(pump.process.pid, writer.pid)
""")  # ...and exits at once, as vmsilod does at a restart, leaving pump and writer running


def test_pump_and_writer_outlive_the_process_that_started_them(logs: Dir) -> None:
    parent = subprocess.run([sys.executable, "-c", PARENT, str(logs.path)],
                            capture_output=True, timeout=30, check=False)
    assert parent.returncode == 0, parent.stderr.decode()
    pump_pid, writer_pid = map(int, parent.stdout.split())
    # Both run in sessions of their own, so a signal to the parent's group misses them.
    assert os.getsid(pump_pid) == pump_pid and os.getsid(writer_pid) == writer_pid
    assert (logs.path / "helper.log").read_bytes() in (b"", b"first\n")
    assert Path(f"/proc/{pump_pid}").exists()
    wait_gone(writer_pid)
    wait_gone(pump_pid)
    assert (logs.path / "helper.log").read_bytes() == b"first\nsecond\n"


@ROOT_ONLY
def test_a_full_disk_drops_data_without_blocking_the_writer(tmp_path: Path) -> None:
    mount = tmp_path / "small"
    mount.mkdir(mode=0o700)
    proc.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount)])
    try:
        with Dir.secure(mount / "logs") as logs:
            filler = mount / "filler"
            with open(filler, "wb") as out, pytest.raises(OSError):
                out.write(b"\0" * 2 * 1024 * 1024)  # fills the tmpfs
            pump = logpump.start(logs, ["console.log"], cap=4 * 1024 * 1024)
            writer = proc.spawn(
                [sys.executable, "-c",
                 "import sys, time\n"
                 "sys.stdout.buffer.write(b'x' * 3_000_000); sys.stdout.flush()\n"
                 "sys.stdin.readline()\n"
                 "sys.stdout.buffer.write(b'after\\n')\n"],
                stdin=subprocess.PIPE, stdout=pump.fd("console.log"))
            pump.close_write_ends()
            assert writer.stdin is not None
            time.sleep(1)  # the 3 MB are written (and dropped) without waiting for space
            assert writer.poll() is None
            filler.unlink()
            time.sleep(logpump.RETRY_INTERVAL)
            writer.stdin.write(b"go\n")
            writer.stdin.close()
            assert writer.wait(10) == 0
            assert pump.process.wait(10) == 0
            text = (logs.path / "console.log").read_bytes()
            assert text.endswith(b"bytes dropped: No space left on device]\nafter\n")
            dropped = int(text.rsplit(b"[vmsilo log pump: ", 1)[1].split(b" ")[0])
            assert len(text) - len(b"after\n") + dropped >= 3_000_000
    finally:
        proc.run(["umount", str(mount)])


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                    reason="qemu-system-x86_64 is not installed")
def test_qemu_writes_a_chardev_log_and_its_stderr_through_one_pump(logs: Dir,
                                                                 tmp_path: Path) -> None:
    """How vmsilod feeds QEMU: ``-add-fd`` with the write end and ``logfile=/dev/fdset/N``
    on the chardev (QEMU opens nothing by path), its stderr into a second log. The monitor's
    banner, printed to the chardev when a client connects, shows up in the log."""
    import socket

    pump = logpump.start(logs, ["console.log", "vmm.log"])
    console = pump.fd("console.log")
    monitor = tmp_path / "monitor.sock"
    qemu = proc.spawn(
        ["qemu-system-x86_64", "-M", "none", "-nodefaults", "-display", "none",
         "-add-fd", f"fd={console},set=1",
         "-chardev", f"socket,id=mon,path={monitor},server=on,wait=off,"
                     "logfile=/dev/fdset/1,logappend=on",
         "-mon", "chardev=mon,mode=control", "-no-user-config"],
        pass_fds=[console], stdout=pump.fd("vmm.log"), stderr=pump.fd("vmm.log"))
    pump.close_write_ends()
    try:
        deadline = time.monotonic() + 20
        while not monitor.exists():
            assert qemu.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(monitor))
            greeting = client.recv(4096)
            client.sendall(b'{"execute": "qmp_capabilities"}\n{"execute": "quit"}\n')
            with contextlib.suppress(ConnectionResetError):  # QEMU quits under us
                while client.recv(4096):
                    pass
        assert qemu.wait(20) == 0
    finally:
        proc.stop(qemu)
    assert pump.process.wait(10) == 0
    # Everything QEMU wrote to the chardev is logged, connected or not: a RESUME event may
    # come before the greeting.
    assert b'"QMP"' in greeting
    assert greeting in (logs.path / "console.log").read_bytes()
    assert stat.S_IMODE(logs.lstat("console.log").st_mode) == 0o600


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                    reason="qemu-system-x86_64 is not installed")
def test_qemu_errors_reach_its_log(logs: Dir) -> None:
    pump = logpump.start(logs, ["vmm.log"])
    qemu = proc.spawn(["qemu-system-x86_64", "-no-such-option"], stdout=pump.fd("vmm.log"),
                      stderr=pump.fd("vmm.log"))
    pump.close_write_ends()
    assert qemu.wait(20) != 0
    assert pump.process.wait(10) == 0
    assert b"-no-such-option: invalid option" in (logs.path / "vmm.log").read_bytes()


def test_a_stopped_pump_gives_its_writer_a_broken_pipe_not_a_hang(logs: Dir) -> None:
    pump = logpump.start(logs, ["x.log"], cap=CAP)
    writer = proc.spawn([sys.executable, "-c",
                         "import sys\n"
                         "try:\n"
                         "    while True: sys.stdout.buffer.write(b'y' * 65536)\n"
                         "except BrokenPipeError:\n"
                         "    sys.exit(7)\n"],
                        stdout=pump.fd("x.log"))
    pump.close_write_ends()
    time.sleep(0.3)
    proc.stop(pump.process)
    assert writer.wait(10) in (7, 1, -signal.SIGPIPE)
