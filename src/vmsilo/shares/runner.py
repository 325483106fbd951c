"""Running one virtiofsd per share, and the shared home's first-start copy of the template.

vmsilod creates each share's vhost-user socket itself (owned by the VMM's user, mode 0600, in
``<runtime dir>/virtiofs-<tag>/``) and hands the listening descriptor to virtiofsd, which runs
as root in its own sandbox (namespaces, pivot_root, seccomp, dropped capabilities). Around it
vmsilod adds its own IPC and UTS namespaces, a file-descriptor limit, and a capability
bounding set of only what virtiofsd uses; a read-only share is also a read-only bind mount
in virtiofsd's mount namespace, so that even a virtiofsd without ``--readonly`` (the C one)
cannot write to it. virtiofsd ends by itself when the VMM disconnects; ``stop`` makes sure.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from vmsilo.config.model import Virtiofs
from vmsilo.errors import UserError
from vmsilo.host import proc
from vmsilo.shares.plan import Share
from vmsilo.shares.virtiofsd import RLIMIT_NOFILE, Virtiofsd, command

# What virtiofsd needs: file ownership and permission overrides (it acts for any guest uid),
# set*id for per-request credentials, mknod, file capabilities, file handles, and
# sys_admin/sys_chroot for its own namespace sandbox, setpcap to drop the rest itself.
CAPABILITIES = (
    "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "setgid", "setuid",
    "mknod", "setfcap", "setpcap", "sys_admin", "sys_chroot",
)  # fmt: skip
START_CHECK_SECONDS = 0.3
STOP_SECONDS = 5.0
# Mounts the source read-only over itself in the (private) mount namespace, then runs argv.
_READONLY_BIND = 'mount --bind -- "$0" "$0" && mount -o remount,bind,ro -- "$0" "$0" && exec "$@"'


@dataclass
class RunningShare:
    tag: str
    directory: Path  # virtiofs-<tag>/ in the runtime dir: socket and pid
    process: subprocess.Popen[bytes] | None  # None when re-adopted (not our child)
    pid: int

    @property
    def socket(self) -> Path:
        return self.directory / "socket"


def share_directory(runtime_dir: Path, tag: str) -> Path:
    return runtime_dir / f"virtiofs-{tag}"


def ensure_home(share: Share, template: Path, owner: tuple[int, int]) -> bool:
    """Create the shared home from the template if it does not exist; True if created.
    An existing home is never touched. The copy is made beside it and renamed into place, so a
    crash mid-copy leaves no half home."""
    uid, gid = owner
    if not template.exists():
        template.parent.mkdir(parents=True, exist_ok=True)
        template.mkdir(mode=0o755)
        os.chown(template, uid, gid)
    home = share.source
    if home.exists():
        if not home.is_dir():
            raise UserError(
                f"{share.option_path}: {home} exists and is not a directory; "
                "move it away or share another path"
            )
        return False
    parent = home.parent
    if not parent.exists():
        parent.mkdir(parents=True, mode=0o755)
        os.chown(parent, uid, gid)
    staging = parent / f".{home.name}.vmsilo-new"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(template, staging, symlinks=True)
    for root, dirs, files in os.walk(staging):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(root, name), uid, gid)
    os.chown(staging, uid, gid)
    os.chmod(staging, 0o700)
    staging.rename(home)
    return True


def _listening_socket(path: Path, owner: tuple[int, int] | None) -> socket.socket:
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        if owner is not None:
            os.chown(path, *owner)
        os.chmod(path, 0o600)
        sock.listen(1)
    except BaseException:
        sock.close()
        raise
    return sock


CAP_SYS_RESOURCE = 24


def nofile_limit() -> int:
    """virtiofsd's open-file limit: ``RLIMIT_NOFILE``, or our own hard limit where we may
    not raise it (no CAP_SYS_RESOURCE, e.g. in a container)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    try:
        status = Path("/proc/self/status").read_text()
        effective = int(status.split("CapEff:")[1].split()[0], 16)
    except (OSError, IndexError, ValueError):
        effective = 0
    if effective & (1 << CAP_SYS_RESOURCE) or hard == resource.RLIM_INFINITY:
        return RLIMIT_NOFILE
    return min(RLIMIT_NOFILE, hard)


def wrapper(share: Share, found: Virtiofsd, argv: list[str]) -> list[str]:
    """virtiofsd's argv inside vmsilod's own confinement."""
    limit = nofile_limit()
    bounding = "-all," + ",".join(f"+{cap}" for cap in CAPABILITIES)
    wrapped = ["unshare", "--ipc", "--uts", "--mount", "--propagation", "private", "--",
               "prlimit", f"--nofile={limit}:{limit}", "--",
               "setpriv", f"--bounding-set={bounding}", "--"]  # fmt: skip
    if share.readonly and found.flavour == "qemu":
        wrapped += ["sh", "-c", _READONLY_BIND, str(share.source)]
    return wrapped + argv


def start(
    found: Virtiofsd,
    share: Share,
    settings: Virtiofs,
    runtime_dir: Path,
    log_path: Path,
    owner: tuple[int, int] | None,
) -> RunningShare:
    if not share.source.is_dir():
        raise UserError(
            f"{share.option_path}: {share.source} is not a directory on the host; "
            "create it or fix the path"
        )
    directory = share_directory(runtime_dir, share.tag)
    directory.mkdir(mode=0o700, exist_ok=True)
    if owner is not None:
        os.chown(directory, *owner)
    sock = _listening_socket(directory / "socket", owner)
    try:
        argv = wrapper(
            share,
            found,
            command(found, share.options, settings, source=str(share.source), fd=sock.fileno()),
        )
        quiet = share.options.log_level == "off"
        with open(os.devnull if quiet else log_path, "ab") as log:
            process = proc.spawn(argv, stdout=log, stderr=log, pass_fds=[sock.fileno()])
    finally:
        sock.close()
    running = RunningShare(share.tag, directory, process, process.pid)
    (directory / "pid").write_text(f"{process.pid}\n")
    time.sleep(START_CHECK_SECONDS)  # an option it rejects ends it at once
    if process.poll() is not None:
        stop(running)
        raise UserError(
            f"{share.option_path}: virtiofsd exited at start with status "
            f"{process.returncode}; see {log_path}"
        )
    return running


def _is_ours(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"virtiofsd" in cmdline


def adopt(runtime_dir: Path, tag: str) -> RunningShare | None:
    """The virtiofsd a previous vmsilod started for this share, if it still runs."""
    directory = share_directory(runtime_dir, tag)
    try:
        pid = int((directory / "pid").read_text().strip())
    except (OSError, ValueError):
        return None
    if not _is_ours(pid):
        return None
    return RunningShare(tag, directory, None, pid)


def stop(running: RunningShare) -> None:
    """End virtiofsd (if the VMM's exit has not already) and remove its socket directory."""
    if running.process is not None:
        if running.process.poll() is None:
            running.process.send_signal(signal.SIGTERM)
            try:
                running.process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                running.process.kill()
                running.process.wait()
    elif _is_ours(running.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(running.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        while _is_ours(running.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            if _is_ours(running.pid):
                os.kill(running.pid, signal.SIGKILL)
    shutil.rmtree(running.directory, ignore_errors=True)
