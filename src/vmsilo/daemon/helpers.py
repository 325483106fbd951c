"""Running the host halves of guest services (the D-Bus proxy, the Wayland path) for vmsilod:
as the desktop user, each in its own bubblewrap sandbox (``vmsilo.host.sandbox``).

A helper parses guest data, so it is treated as the first thing a hostile guest would take
over. It sees the host's programs and libraries, the Python interpreter and the vmsilo package
(read-only), the one desktop socket it serves (the compositor's or the session bus'), bound by
descriptor at a fixed path under ``DESKTOP_DIR``, and an empty private ``/tmp``; never the
user's home, other sockets of the user, vmsilod's control socket or another VM's files. Its
only way to the guest is its stream broker (``vmsilo.daemon.broker``), an inherited
descriptor; its output goes to a log descriptor the caller opened.

The desktop socket is opened by vmsilod with ``O_PATH | O_NOFOLLOW`` and must be a socket
owned by the desktop user: the user's runtime directory is theirs to fill with links, and a
link there must never make root bind a file of its choosing into the sandbox.

The interpreter and what it needs come from ``vmsilo.host.interpreter``
(``VMSILO_HELPER_PYTHON``, ``PYTHONPATH``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import stat
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vmsilo.daemon.broker import OpenPort, StreamBroker
from vmsilo.errors import UserError
from vmsilo.host import proc
from vmsilo.host.interpreter import runtime_binds, runtime_env
from vmsilo.host.paths import Paths
from vmsilo.host.safefs import Dir
from vmsilo.host.sandbox import Sandbox, read_child_pid

log = logging.getLogger(__name__)

# Where a helper finds its desktop socket inside the sandbox.
DESKTOP_DIR = Path("/run/desktop")
STOP_GRACE = 5.0  # seconds from SIGTERM to SIGKILL
LOG_MODE = 0o640

# (vm, log file name) -> a descriptor open for appending; the caller of spawn closes it
LogOpener = Callable[[str, str], int]


class DesktopSocketError(UserError):
    """The desktop socket a helper should serve is not one vmsilo may hand over."""


# -- the sandbox -----------------------------------------------------------------------------


def sandbox_for(owner: tuple[int, int] | None) -> Sandbox:
    """A helper's sandbox: the desktop user (system mode) or vmsilod's own user (user mode,
    where bubblewrap makes a user namespace); no network namespace of the host's."""
    uid, gid = owner if owner is not None else (None, None)
    return Sandbox(uid=uid, gid=gid, ro_binds=runtime_binds(), env=runtime_env())


# -- the desktop socket ----------------------------------------------------------------------


def open_desktop_socket(path: Path, owner: tuple[int, int] | None) -> int:
    """An ``O_PATH`` descriptor of the socket at ``path`` (the last component is not
    followed), which must be a socket of the desktop user (``owner``; vmsilod's own user in
    user mode). Raises ``DesktopSocketError``."""
    uid = owner[0] if owner is not None else os.getuid()
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise DesktopSocketError(f"{path}: cannot open it ({exc.strerror})") from exc
    st = os.fstat(fd)
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid != uid:
        os.close(fd)
        what = "a socket" if stat.S_ISSOCK(st.st_mode) else "not a socket (a link or a file)"
        raise DesktopSocketError(
            f"{path} is {what} owned by uid {st.st_uid}; vmsilo hands helpers only a socket "
            f"of the desktop user (uid {uid})")
    return fd


def bind_fd_args(fd: int, dest: Path) -> list[str]:
    """bubblewrap options showing what ``fd`` names at ``dest`` (read-only), with its
    parents enterable by the unprivileged user."""
    args: list[str] = []
    for parent in reversed(dest.parents):
        if parent != Path("/"):
            args += ["--perms", "0755", "--dir", str(parent)]
    return [*args, "--ro-bind-fd", str(fd), str(dest)]


def with_bwrap_args(argv: list[str], extra: Sequence[str]) -> list[str]:
    """``argv`` (``Sandbox.argv``'s ``bwrap … -- prlimit …``) with more bubblewrap options
    before its first ``--``."""
    end = argv.index("--")
    return [*argv[:end], *extra, *argv[end:]]


# -- logs --------------------------------------------------------------------------------------


def log_opener(paths: Paths) -> LogOpener:
    """Open ``<name>`` for appending in the VM's log directory: root's own (created 0750),
    reached without following links, the file itself opened ``O_NOFOLLOW``."""

    def open_log(vm: str, name: str) -> int:
        with Dir.secure(paths.vm_log_dir(vm), mode=0o750) as directory:
            return directory.open(name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, LOG_MODE)

    return open_log


# -- one running helper -------------------------------------------------------------------------


@dataclass
class Helper:
    """A sandboxed helper: ``process`` is bubblewrap; ``pidfd`` names the command inside (the
    sandbox's PID 1), which is what is signalled: bubblewrap ending would leave it running."""

    name: str
    process: subprocess.Popen[bytes]
    pidfd: int | None

    @classmethod
    def spawn(cls, name: str, sandbox: Sandbox, command: Sequence[str], *, log_fd: int,
              pass_fds: Sequence[int] = (), extra_bwrap: Sequence[str] = ()) -> Helper:
        info_read, info_write = os.pipe2(os.O_CLOEXEC)
        try:
            argv = with_bwrap_args(sandbox.argv(command, info_fd=info_write), extra_bwrap)
            process = proc.spawn(argv, stdout=log_fd, stderr=log_fd,
                                 pass_fds=(info_write, *pass_fds))
        except BaseException:
            os.close(info_read)
            raise
        finally:
            os.close(info_write)
        pidfd = None
        try:
            pid = read_child_pid(info_read)
            pidfd = os.pidfd_open(pid)
        except OSError as exc:
            log.warning("%s: no pid from its sandbox (%s)", name, exc)
        # bubblewrap ends as soon as its child does: while it runs, the pid is that child's.
        if process.poll() is not None and pidfd is not None:
            os.close(pidfd)
            pidfd = None
        return cls(name, process, pidfd)

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def _signal(self, signum: int) -> None:
        if self.pidfd is not None:
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(self.pidfd, signum)
        elif self.process.poll() is None:
            self.process.send_signal(signum)

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM to the command, ``grace`` seconds, SIGKILL; bubblewrap is reaped."""
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


# -- the helpers of one kind, one per running VM ------------------------------------------------


@dataclass
class Running:
    helper: Helper
    broker: StreamBroker


@dataclass(frozen=True)
class HelperKind:
    """What the launchers differ in."""

    title: str  # for messages: "D-Bus proxy", "Wayland"
    port: int  # the one guest port its broker opens
    max_streams: int  # open streams at once
    log_name: str  # its log file in the VM's log directory
    socket_inside: Path  # where its desktop socket is bound in the sandbox


class HelperLauncher:
    """Starts and stops one kind of helper for VMs, each with its broker (base of
    ``ProxyLauncher`` and ``WaylandLauncher``). ``open_port`` is ``Supervisor.open_port``;
    ``open_log`` gives the descriptor for the helper's output (default: ``log_opener``)."""

    kind: HelperKind

    def __init__(self, paths: Paths, owner: tuple[int, int] | None, open_port: OpenPort,
                 open_log: LogOpener | None = None) -> None:
        self.paths = paths
        self.owner = owner  # the desktop user's uid, gid (system mode)
        self.open_port = open_port
        self.open_log = open_log or log_opener(paths)
        self.running: dict[str, Running] = {}
        self._stopping: set[asyncio.Future[None]] = set()

    def alive(self, name: str) -> bool:
        current = self.running.get(name)
        return current is not None and current.helper.running()

    def launch(self, vm: str, desktop_socket: Path, command: Callable[[int], list[str]],
               sandbox: Sandbox | None = None) -> Running:
        """Start the helper of ``vm``: ``command(broker_fd)`` is its argv inside the sandbox
        (default ``sandbox_for(owner)``), ``desktop_socket`` the socket it serves."""
        kind = self.kind
        socket_fd = open_desktop_socket(desktop_socket, self.owner)
        try:
            broker = StreamBroker(vm, kind.title, kind.port, self.open_port, kind.max_streams,
                                  on_violation=lambda: self.cut_off(vm))
            try:
                log_fd = self.open_log(vm, kind.log_name)
                try:
                    helper = Helper.spawn(
                        f"VM {vm}: {kind.title}", sandbox or sandbox_for(self.owner),
                        command(broker.helper_fd), log_fd=log_fd,
                        pass_fds=(broker.helper_fd, socket_fd),
                        extra_bwrap=bind_fd_args(socket_fd, kind.socket_inside))
                finally:
                    os.close(log_fd)
            except BaseException:
                broker.close()
                raise
        finally:
            os.close(socket_fd)
        broker.release()
        broker.start()
        self.running[vm] = Running(helper, broker)
        return self.running[vm]

    def stop(self, name: str) -> None:
        running = self.running.pop(name, None)
        if running is not None:
            running.broker.close()  # the helper sees its broker end and ends
            running.helper.stop()

    def cut_off(self, name: str) -> None:
        """A helper broke its broker's rules: stop it without holding up the event loop."""
        running = self.running.pop(name, None)
        if running is None:
            return
        running.broker.close()
        stopping = asyncio.ensure_future(asyncio.to_thread(running.helper.stop))
        self._stopping.add(stopping)
        stopping.add_done_callback(self._stopping.discard)

    def stop_all(self) -> None:
        for name in list(self.running):
            self.stop(name)
