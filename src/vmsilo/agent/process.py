"""Starting a requested command in the guest, and the file-descriptor plumbing around it.

The command runs as a guest account (``user`` by default) in its own session, with a
login-like environment, either on three pipes or on a PTY that becomes its controlling
terminal. The agent is the guest's exec service, so spawning commands is its job; the host
rule that only ``vmsilo.host.proc`` spawns does not apply to guest code, which may not import
host modules. Exit is awaited through a pidfd, so no helper threads exist (which also keeps the
``preexec_fn`` used for the controlling terminal safe).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import signal
import struct
import subprocess
import termios
from dataclasses import dataclass

from vmsilo.agent.fdio import wait_readable
from vmsilo.protocol.exec import ExecRequest, ExitStatus

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class CommandError(Exception):
    """The request cannot be carried out (unknown user, not allowed); told to the host."""


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str
    shell: str


def lookup_account(name: str) -> Account:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise CommandError(f"no user {name!r} in the guest") from None
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir, entry.pw_shell)


WAYLAND_ENVIRONMENT = {
    "WAYLAND_DISPLAY": "wayland-0",
    "XDG_SESSION_TYPE": "wayland",
    "GDK_BACKEND": "wayland",
    "QT_QPA_PLATFORM": "wayland",
    "MOZ_ENABLE_WAYLAND": "1",
    "SDL_VIDEODRIVER": "wayland",
    "CLUTTER_BACKEND": "wayland",
}


def login_environment(account: Account, caller_env: dict[bytes, bytes],
                      tty: bool) -> dict[bytes, bytes]:
    """The command's environment: a login's, then the caller's entries (exact bytes) over it."""
    env = {
        "HOME": account.home,
        "USER": account.name,
        "LOGNAME": account.name,
        "SHELL": account.shell or "/bin/sh",
        "PATH": ROOT_PATH if account.uid == 0 else DEFAULT_PATH,
        # The image's locale (/etc/default/locale); some programs refuse to start without UTF-8.
        "LANG": "C.UTF-8",
    }
    runtime_dir = f"/run/user/{account.uid}"
    if os.path.isdir(runtime_dir):
        env["XDG_RUNTIME_DIR"] = runtime_dir
        # The user's session bus (vmsilo-user-session.service starts it in VMs with the D-Bus
        # proxy): programs find the tray watcher and the notification server there.
        if os.path.exists(f"{runtime_dir}/bus"):
            env["DBUS_SESSION_BUS_ADDRESS"] = f"unix:path={runtime_dir}/bus"
        # The display vmsilo-wayland.service makes: programs (and their toolkits) use it.
        if os.path.exists(f"{runtime_dir}/wayland-0"):
            env.update(WAYLAND_ENVIRONMENT)
    if tty:
        env["TERM"] = "xterm-256color"
    env_bytes = {os.fsencode(name): os.fsencode(value) for name, value in env.items()}
    env_bytes.update(caller_env)
    return env_bytes


def set_window_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _take_controlling_terminal() -> None:
    # Runs in the child after setsid(); stdin is the PTY slave.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


@dataclass
class Child:
    """A started command. ``stdin_fd``/``stdout_fd`` are the PTY master in TTY mode (then
    ``stderr_fd`` is None); all our ends are non-blocking."""

    popen: subprocess.Popen[bytes]
    stdin_fd: int | None
    stdout_fd: int | None
    stderr_fd: int | None
    tty: bool

    @property
    def pid(self) -> int:
        return self.popen.pid

    def send_signal(self, signum: int) -> None:
        if self.popen.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signum)

    def resize(self, rows: int, cols: int) -> None:
        if self.tty and self.stdin_fd is not None:
            set_window_size(self.stdin_fd, rows, cols)

    async def wait(self) -> ExitStatus:
        await wait_for_exit(self.popen)
        code = self.popen.returncode
        assert code is not None
        return ExitStatus(signal=-code) if code < 0 else ExitStatus(code=code)

    def close_stdin(self) -> None:
        if self.stdin_fd is not None and not self.tty:
            os.close(self.stdin_fd)
            self.stdin_fd = None

    def close_all(self) -> None:
        fds = {self.stdin_fd, self.stdout_fd, self.stderr_fd} - {None}
        for fd in fds:
            assert fd is not None
            with contextlib.suppress(OSError):
                os.close(fd)
        self.stdin_fd = self.stdout_fd = self.stderr_fd = None


async def wait_for_exit(popen: subprocess.Popen[bytes]) -> int:
    """Wait for a child without threads or SIGCHLD handlers: poll its pidfd."""
    if popen.returncode is not None:
        return popen.returncode
    pidfd = os.pidfd_open(popen.pid)
    try:
        while popen.poll() is None:
            await wait_readable(pidfd)
    finally:
        os.close(pidfd)
    assert popen.returncode is not None
    return popen.returncode


def start_command(request: ExecRequest, account: Account) -> Child:
    """Start the command; raises ``OSError`` if it cannot be executed (the caller reports it
    like a shell would) and ``CommandError`` if the account cannot be switched to."""
    switch_user = os.geteuid() != account.uid
    if switch_user and os.geteuid() != 0:
        raise CommandError(f"the agent is not root and cannot run commands as {account.name!r}")
    env = login_environment(account, request.env, request.tty)
    cwd = request.cwd or os.fsencode(account.home if os.path.isdir(account.home) else "/")
    uid = account.uid if switch_user else None
    gid = account.gid if switch_user else None
    groups = os.getgrouplist(account.name, account.gid) if switch_user else None
    if request.tty:
        master, slave = os.openpty()
        try:
            set_window_size(slave, request.rows or 24, request.cols or 80)
            popen = subprocess.Popen(
                request.argv,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env=env,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_take_controlling_terminal,
                user=uid,
                group=gid,
                extra_groups=groups,
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        return Child(popen, master, master, None, tty=True)
    pipes = [os.pipe2(os.O_CLOEXEC) for _ in range(3)]
    try:
        popen = subprocess.Popen(
            request.argv,
            stdin=pipes[0][0],
            stdout=pipes[1][1],
            stderr=pipes[2][1],
            env=env,
            cwd=cwd,
            start_new_session=True,
            user=uid,
            group=gid,
            extra_groups=groups,
        )
    except BaseException:
        for read_end, write_end in pipes:
            os.close(read_end)
            os.close(write_end)
        raise
    os.close(pipes[0][0])
    os.close(pipes[1][1])
    os.close(pipes[2][1])
    ours = (pipes[0][1], pipes[1][0], pipes[2][0])
    for fd in ours:
        os.set_blocking(fd, False)
    return Child(popen, *ours, tty=False)


def hang_up(child: Child) -> None:
    """The host went away: a terminal session gets SIGHUP as on a real hangup; a pipe
    session sees the end of its stdin and runs on, its output discarded (a GUI app started by
    vm-run should survive a daemon restart)."""
    if child.tty:
        child.send_signal(signal.SIGHUP)
    else:
        child.close_stdin()
