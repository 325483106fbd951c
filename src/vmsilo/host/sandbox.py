"""Jails for the processes vmsilod starts: bubblewrap namespaces, then an unprivileged uid.

A ``Sandbox`` is a value: which host paths a process sees (read-only, read-write, device
nodes), which namespaces it gets, and whom it runs as. ``argv`` turns it into
``bwrap … -- prlimit … -- setpriv … -- <command>`` (bubblewrap(1), prlimit(1), setpriv(1)):
bubblewrap, started by root, builds new mount, PID, IPC, UTS, cgroup (and by default network)
namespaces whose root is an empty tmpfs holding only the listed paths; prlimit sets the
resource limits while it still may raise them; setpriv then switches to the sandbox's uid and
gid with no supplementary groups, empties every capability set (bounding set included) and
sets ``no_new_privs``, so nothing the command executes can gain privileges again.

The same recipe jails the VMM (QEMU, as the VM's own uid) and the host halves of guest
services (as the desktop user, seeing only the one socket they serve). File descriptors the
caller passes (``pass_fds``) stay open through all three execs: vmsilod opens what the jailed
process needs and hands it over, instead of letting it reach the paths.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

BWRAP = "bwrap"
INSTALL_BWRAP = "install bubblewrap (Debian package bubblewrap)"

# The host's programs and libraries, read-only. /bin, /lib… are links into /usr on merged-/usr
# systems (every current distribution) and real directories elsewhere; both are handled.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# Files under /etc a dynamically linked program may read at start; nothing else of /etc.
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime")


@dataclass(frozen=True)
class Limits:
    """Resource limits (setrlimit(2)), soft = hard. ``None`` leaves one as inherited."""

    nofile: int | None = 4096
    memlock: int | None = 64 * 1024  # bytes
    nproc: int | None = None

    def prlimit_args(self) -> list[str]:
        args = []
        for name, value in (("nofile", self.nofile), ("memlock", self.memlock),
                            ("nproc", self.nproc)):
            if value is not None:
                args.append(f"--{name}={value}:{value}")
        return args


@dataclass(frozen=True)
class Sandbox:
    uid: int | None  # None: stay who we are (vmsilod without root; bubblewrap then makes a
    gid: int | None  # user namespace itself)
    ro_binds: tuple[Path, ...] = ()  # shown read-only at the same path
    rw_binds: tuple[Path, ...] = ()  # shown writable at the same path
    dev_binds: tuple[Path, ...] = ()  # device nodes (e.g. /dev/kvm)
    # (descriptor, where): what an open descriptor names, read-only — a file the caller
    # opened safely, shown without bubblewrap (root) ever looking its path up
    fd_binds: tuple[tuple[int, Path], ...] = ()
    tmpfs: tuple[Path, ...] = (Path("/tmp"),)
    env: dict[str, str] = field(default_factory=dict)  # the whole environment inside
    share_net: bool = False  # keep the host's network namespace (default: an empty one)
    limits: Limits = Limits()
    chdir: Path = Path("/")

    def argv(self, command: Sequence[str], *, info_fd: int | None = None,
             bwrap: str = BWRAP) -> list[str]:
        """The full command line. With ``info_fd`` bubblewrap writes one JSON object to that
        descriptor once the sandbox runs, holding ``child-pid``: the command's pid on the
        host (``read_child_pid``)."""
        argv = [bwrap, "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup",
                # The command is the namespace's init: one process fewer, and its pid is the
                # one bubblewrap reports.
                "--as-pid-1",
                # A new session: it cannot push input into vmsilod's terminal (TIOCSTI).
                "--new-session", "--clearenv"]
        if not self.share_net:
            argv.append("--unshare-net")
        for name in SYSTEM_DIRS:
            path = Path(name)
            if path.is_symlink():
                argv += ["--symlink", os.readlink(path), name]
            elif path.is_dir():
                argv += ["--ro-bind", name, name]
        for path in self.tmpfs:  # first: a bind below one must not be hidden by it
            # Writable by the command (the only user inside), sticky as /tmp is.
            argv += ["--perms", "1777", "--tmpfs", str(path)]
        # bubblewrap makes missing parents of a bind mode 0700 (root's): the unprivileged
        # command could not reach what is bound below them.
        made: set[Path] = set()
        for path in (*map(Path, SYSTEM_FILES), *self.ro_binds, *self.rw_binds,
                     *self.dev_binds, *(dest for _, dest in self.fd_binds)):
            for parent in reversed(path.parents):
                if parent != Path("/") and parent not in made and str(parent) not in (
                        "/dev", "/proc", "/usr"):
                    made.add(parent)
                    argv += ["--perms", "0755", "--dir", str(parent)]
        for name in SYSTEM_FILES:
            argv += ["--ro-bind-try", name, name]
        argv += ["--proc", "/proc", "--dev", "/dev"]
        for path in self.ro_binds:
            argv += ["--ro-bind", str(path), str(path)]
        for path in self.rw_binds:
            argv += ["--bind", str(path), str(path)]
        for path in self.dev_binds:
            argv += ["--dev-bind", str(path), str(path)]
        for fd, dest in self.fd_binds:
            argv += ["--ro-bind-fd", str(fd), str(dest)]
        for key, value in sorted(self.env.items()):
            argv += ["--setenv", key, value]
        argv += ["--chdir", str(self.chdir)]
        if info_fd is not None:
            argv += ["--info-fd", str(info_fd)]
        argv += ["--", "prlimit", *self.limits.prlimit_args(), "--",
                 "setpriv", *self._identity(), "--inh-caps=-all", "--ambient-caps=-all",
                 "--bounding-set=-all",
                 "--no-new-privs", "--", *command]
        return argv

    def _identity(self) -> list[str]:
        if self.uid is None or self.gid is None:
            return []
        return [f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups"]


def read_child_pid(fd: int, timeout: float = 10.0) -> int:
    """The command's host pid from bubblewrap's ``--info-fd`` pipe (read end ``fd``, which
    is closed here): one JSON object holding ``child-pid``. Raises ``OSError`` if bubblewrap
    ended (or ``timeout`` seconds passed) without writing it."""
    import select

    data = b""
    try:
        while True:
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
                raise OSError("bubblewrap did not report the sandbox's pid in time")
            chunk = os.read(fd, 4096)
            data += chunk
            if len(data) > 65536:
                raise OSError("bubblewrap's info is too long")
            try:
                return int(json.loads(data)["child-pid"])
            except (ValueError, KeyError, TypeError) as exc:
                if not chunk:
                    raise OSError("bubblewrap did not report the sandbox's pid "
                                  f"({data[:200]!r})") from exc
    finally:
        os.close(fd)
