"""VM lifecycle through the commands, as a user lives with it: status, on-demand start, the
throw-away root, autoShutdown, dependsOn, the console, re-adoption after a daemon restart, and
a VMM that dies."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.support.daemon import RunningDaemon

pytestmark = pytest.mark.timeout(900)


def test_status_is_a_table_of_every_vm(daemon: RunningDaemon) -> None:
    result = daemon.cli("vmsilo", "status")
    assert result.returncode == 0
    text = result.stdout.decode()
    for column in ("VM", "state", "uptime", "CID", "memory", "pid", "reason"):
        assert column in text
    for vm in ("alpha", "base", "ephemeral", "sleepy", "top"):
        assert vm in text


def test_unknown_vm_lists_the_known_ones(daemon: RunningDaemon) -> None:
    result = daemon.cli("vm-run", "nosuch", "true")
    assert result.returncode == 255
    message = result.stderr.decode()
    assert "unknown VM 'nosuch'" in message
    assert "alpha, base, ephemeral, sleepy, top" in message
    assert daemon.cli("vm-start", "nosuch").returncode == 1


def test_daemon_not_running_says_how_to_start_it(daemon: RunningDaemon, tmp_path: Path) -> None:
    env = {"VMSILO_CONTROL_SOCKET": str(tmp_path / "none.socket")}
    for command in (["vm-run", "alpha", "true"], ["vmsilo", "status"], ["vm-stop", "alpha"]):
        result = daemon.cli(*command, env_override=env)
        assert result.returncode != 0
        assert b"vmsilod is not running" in result.stderr
        assert b"vmsilo daemon" in result.stderr


def _ping_as(uid: int, path: Path) -> bytes:
    """Connect as another uid (a forked child drops privileges) and say ping."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no Python-level cleanup, just the answer through the pipe
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(10)
                sock.connect(str(path))
                sock.sendall(b'{"op":"ping"}\n')
                answer = b""
                while chunk := sock.recv(4096):
                    answer += chunk
        except OSError as exc:
            answer = f"OSError: {exc.strerror}".encode()
        os.write(write_end, answer)
        os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as pipe:
        return pipe.read()


def test_other_users_are_refused(daemon: RunningDaemon) -> None:
    # The socket's mode keeps them out first...
    assert oct(daemon.socket.stat().st_mode & 0o777) == "0o660"
    assert _ping_as(1, daemon.socket) == b"OSError: Permission denied"
    assert daemon.cli("vmsilo", "status").returncode == 0  # root may
    # ...and the peer-credential check refuses them even where the file mode would not.
    daemon.socket.chmod(0o666)
    try:
        answer = _ping_as(1, daemon.socket)
    finally:
        daemon.socket.chmod(0o660)
    assert b'"ok":false' in answer
    assert b"permission denied: uid 1 may not control vmsilo VMs" in answer
    assert b"refused control connection from uid 1" in daemon.log().encode()


def _overlay(daemon: RunningDaemon, vm: str) -> Path:
    return daemon.root / "state" / vm / "overlay.raw"


def test_concurrent_vm_runs_on_a_stopped_vm_start_it_once(daemon: RunningDaemon) -> None:
    assert daemon.status()["ephemeral"]["state"] == "stopped"
    starts_before = daemon.log().count("VM ephemeral: starting")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(
            lambda i: daemon.cli("vm-run", "ephemeral", "echo", str(i)), range(4)))
    assert [r.stdout for r in results] == [f"{i}\n".encode() for i in range(4)]
    assert daemon.log().count("VM ephemeral: starting") == starts_before + 1


def test_root_overlay_is_thrown_away_at_stop(daemon: RunningDaemon) -> None:
    daemon.cli("vm-start", "ephemeral")
    overlay = _overlay(daemon, "ephemeral")
    assert overlay.exists()
    assert overlay.stat().st_size == 10 << 30  # rootOverlay.size default
    assert overlay.stat().st_blocks * 512 < 1 << 30  # sparse
    # root's alone: the jailed VMM gets descriptors, the desktop user nothing
    assert (overlay.stat().st_uid, overlay.stat().st_mode & 0o777) == (0, 0o600)
    written = daemon.cli("vm-run", "-u", "root", "ephemeral", "sh", "-c",
                         "echo secret > /etc/left-behind && cat /etc/left-behind")
    assert written.stdout == b"secret\n"
    stop = daemon.cli("vm-stop", "ephemeral")
    assert stop.returncode == 0 and b"ephemeral:" in stop.stdout
    assert not overlay.exists()
    assert not (daemon.root / "run" / "ephemeral").exists()
    after = daemon.cli("vm-run", "ephemeral", "cat", "/etc/left-behind")
    assert after.returncode == 1
    assert b"No such file" in after.stderr
    daemon.cli("vm-stop", "ephemeral")


def test_depends_on_starts_dependencies_first(daemon: RunningDaemon) -> None:
    result = daemon.cli("vm-start", "top")
    assert result.returncode == 0, result.stderr
    status = daemon.status()
    assert status["top"]["state"] == "running"
    assert status["base"]["state"] == "running"
    log = daemon.log()
    assert log.rindex("VM base: running") < log.rindex("VM top: starting")
    daemon.cli("vm-stop", "top")
    daemon.cli("vm-stop", "base")


def test_auto_shutdown_stops_an_idle_vm_but_not_a_busy_one(daemon: RunningDaemon) -> None:
    busy = daemon.popen("vm-run", "sleepy", "sleep", "12")
    daemon.wait_for_state("sleepy", "running", timeout=180)
    time.sleep(8)  # well past autoShutdown.after = 3 s, but the command still runs
    assert daemon.status()["sleepy"]["state"] == "running"
    assert busy.wait(60) == 0
    daemon.wait_for_state("sleepy", "stopped", timeout=60)
    assert "idle for 3 s, stopping (autoShutdown)" in daemon.log()


def test_console_attach_and_detach(alpha: RunningDaemon) -> None:
    result = alpha.cli("vm-shell", "alpha", input=b"\ncat /etc/hostname\n", timeout=60)
    assert result.returncode == 0, result.stderr
    assert b"alpha" in result.stdout
    # Detaching leaves the VM and its console running; the scrollback is in the log.
    assert alpha.status()["alpha"]["state"] == "running"
    console_log = alpha.root / "state" / "logs" / "alpha" / "console.log"
    assert b"cat /etc/hostname" in console_log.read_bytes()


def test_restarting_the_daemon_re_adopts_running_vms(alpha: RunningDaemon) -> None:
    before = alpha.status()["alpha"]
    assert before["state"] == "running"
    alpha.restart_daemon_only()
    after = alpha.status()["alpha"]
    assert after["state"] == "running"
    assert after["pid"] == before["pid"]
    assert "re-adopted VMM pid" in alpha.log()
    result = alpha.cli("vm-run", "alpha", "echo", "still here")
    assert result.stdout == b"still here\n", result.stderr


def test_a_killed_vmm_marks_its_vm_failed_and_is_cleaned_up(daemon: RunningDaemon) -> None:
    assert daemon.cli("vm-start", "ephemeral").returncode == 0
    pid = daemon.status()["ephemeral"]["pid"]
    assert isinstance(pid, int)
    os.kill(pid, signal.SIGKILL)
    row = daemon.wait_for_state("ephemeral", "failed", timeout=30)
    assert "the VMM exited unexpectedly" in str(row["reason"])
    assert str(row["log"]).endswith("logs/ephemeral/console.log")
    assert not _overlay(daemon, "ephemeral").exists()
    assert not (daemon.root / "run" / "ephemeral").exists()
    # A failed VM starts again on demand.
    assert daemon.cli("vm-run", "ephemeral", "true").returncode == 0
    daemon.cli("vm-stop", "ephemeral")
