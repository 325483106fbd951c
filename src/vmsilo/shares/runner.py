"""Running one virtiofsd per share, and the shared home's first-start copy of the template.

virtiofsd never has real root: ``vmsilo.shares.userns`` starts it as root of its own user
namespace whose id maps (``vmsilo.shares.idmap``) send the guest's ``user`` to the desktop
user and every other guest id to the VM's unprivileged block, with its own mount, IPC and
UTS namespaces, an open-file limit and a capability bounding set of what virtiofsd uses.
virtiofsd's own sandbox (pid/net/mount namespaces and pivot_root into the share) runs inside
that.

What it serves is the directory vmsilod opened once, without following links
(``vmsilo.shares.source``), not whatever the share's path names later: the launcher mounts
that very directory, from its descriptor, at a fixed path in virtiofsd's mount namespace
(``nosuid``, ``nodev``, read-only for a read-only share, all locked there), and virtiofsd is
given only that path. Only the shared directory's own mode matters to virtiofsd, not the
directories above it.

Each share has a root-owned directory ``<runtime dir>/virtiofs-<tag>/`` (mode 0700). vmsilod
binds the vhost-user socket there itself and hands the listening descriptor to virtiofsd;
vmsilod then connects to it and passes the connected socket to the VMM. The identity of the
virtiofsd it started (pid, start time, executable: ``host/procid``) is recorded there too,
and a later vmsilod adopts that process only if all three still match. virtiofsd ends by
itself when the VMM disconnects; ``stop`` makes sure.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import select
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vmsilo.config.model import Virtiofs
from vmsilo.errors import UserError
from vmsilo.host import proc
from vmsilo.host.ids import IdMapLine
from vmsilo.host.procid import ProcessIdentity
from vmsilo.host.safefs import Dir, UnsafePath
from vmsilo.shares import userns
from vmsilo.shares.plan import Share
from vmsilo.shares.source import Source, exposed, open_source
from vmsilo.shares.virtiofsd import RLIMIT_NOFILE, Virtiofsd, command

log = logging.getLogger(__name__)

# What virtiofsd needs, all of it counted in its user namespace only: file ownership and
# permission overrides (for the guest's ids, on files whose ids the map names), set*id for
# per-request credentials, mknod (the C one will not start without it; device nodes still
# need CAP_MKNOD in the host's namespace, which it does not have), file capabilities (written
# as namespaced ones), file handles, sys_admin/sys_chroot for its own namespace sandbox, and
# setpcap to drop the rest itself.
CAPABILITIES = (
    "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "setgid", "setuid",
    "mknod", "setfcap", "setpcap", "sys_admin", "sys_chroot",
)  # fmt: skip
SOCKET = "socket"
RECORD = "virtiofsd.json"  # the process identity, for re-adoption
START_CHECK_SECONDS = 0.3  # an option virtiofsd rejects ends it within this
EXEC_SECONDS = 10.0  # the launcher's own start, up to its exec of virtiofsd
STOP_SECONDS = 5.0
COPY_SECONDS = 100.0  # the template copy (the start stage allows 120 s in all)


def directory_name(tag: str) -> str:
    return f"virtiofs-{tag}"


def share_directory(runtime_dir: Path, tag: str) -> Path:
    return runtime_dir / directory_name(tag)


@dataclass
class IdMaps:
    """virtiofsd's user-namespace maps (namespace id -> host id)."""

    uids: tuple[IdMapLine, ...]
    gids: tuple[IdMapLine, ...]


@dataclass
class RunningShare:
    tag: str
    directory: Path  # virtiofs-<tag>/ in the runtime dir: socket and process record
    process: subprocess.Popen[bytes] | None  # None when re-adopted (not our child)
    identity: ProcessIdentity
    # A descriptor of the runtime directory (our own duplicate), to remove ``directory``.
    runtime: Dir | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.identity.pid

    @property
    def socket(self) -> Path:
        return self.directory / SOCKET


# -- the shared home ---------------------------------------------------------------------------


SHARED_ROOT_MODE = 0o750


def secure_shared_root(shared_root: Path, group: int) -> None:
    """Make the shared root (``/shared``, created if missing) root's, of the desktop user's
    group ``group``, mode 0750: the user reaches the VMs' homes, other local accounts reach
    nothing below it. A guest can make setuid programs of the desktop user's in its home
    (its ``user`` is the desktop user there) and open the home to everyone (``chmod 755``);
    neither helps another account that cannot pass ``/shared``. virtiofsd does not need to
    pass it either: it gets its share as a mount. Raises ``UnsafePath`` for a foreign or
    linked shared root."""
    with Dir.secure(shared_root, mode=SHARED_ROOT_MODE) as directory:
        st = os.fstat(directory.fd)
        if st.st_gid != group:
            os.fchown(directory.fd, -1, group)  # the owner stays root
        if stat.S_IMODE(st.st_mode) != SHARED_ROOT_MODE:
            os.fchmod(directory.fd, SHARED_ROOT_MODE)


def _staging_name(home: Path) -> str:
    return f".{home.name}.vmsilo-new"


def ensure_home(share: Share, template: Path, owner: tuple[int, int]) -> bool:
    """Create the shared home from the template if it does not exist; True if created.

    Root never works inside the user's tree. The template is root's (created empty, mode
    0755, if missing; never chowned), and so is the home's parent (the shared root). Root
    makes a fresh staging directory ``.<name>.vmsilo-new`` in that parent and gives *that
    directory's descriptor* to the user; a child running as the user (privileges dropped
    before exec) copies the template's contents into it, reaching both through descriptors,
    so the kernel checks every file it reads and writes against the user; root then renames
    it into place. An existing home is never touched; one that is a symbolic link, or not a
    directory, is refused. Raises ``UserError`` (``UnsafePath`` for a foreign or linked
    template or parent)."""
    home = share.source
    if _existing_home(share):
        return False
    with Dir.secure(template.parent) as state:
        template_dir = state.sub(template.name, mode=0o755)
    try:
        try:
            parent = Dir.secure(home.parent, mode=0o755)
        except UnsafePath as exc:
            raise UserError(
                f"{share.option_path}: {home} does not exist and vmsilo creates a home only "
                f"in a directory that is root's alone ({exc}); create {home} yourself, owned "
                "by the desktop user, or share a home in such a directory") from exc
        with parent:
            if parent.exists(home.name):  # made since we looked: never touched
                return False
            staging = _staging_name(home)
            parent.rmtree(staging)  # a crash's leftover (no link is followed)
            os.mkdir(staging, 0o700, dir_fd=parent.fd)
            fd = parent.open(staging, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fchown(fd, *owner)
                _copy_as(owner, template_dir.fd, fd, share)
                os.fchmod(fd, 0o700)  # cp gave it the template's mode
            except BaseException:
                parent.rmtree(staging)
                raise
            finally:
                os.close(fd)
            parent.rename(staging, home.name)
    finally:
        template_dir.close()
    return True


def _existing_home(share: Share) -> bool:
    home = share.source
    try:
        st = os.lstat(home)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        raise UserError(
            f"{share.option_path}: {home} is a symbolic link; vmsilo shares a home only at "
            "its real path: replace the link by the directory, or share the directory's path")
    if not stat.S_ISDIR(st.st_mode):
        raise UserError(
            f"{share.option_path}: {home} exists and is not a directory; "
            "move it away or share another path")
    return True


def _copy_as(owner: tuple[int, int], source_fd: int, target_fd: int, share: Share) -> None:
    """Copy the contents of directory ``source_fd`` into ``target_fd`` as ``owner``: the
    child reaches both through its own ``/proc/self/fd`` (no path of ours it could be
    redirected through); ownership is not preserved, so everything is the user's."""
    uid, gid = owner
    argv = ["cp", "-a", "--no-preserve=ownership", "--",
            f"/proc/self/fd/{source_fd}/.", f"/proc/self/fd/{target_fd}/"]  # fmt: skip
    process = proc.spawn(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         pass_fds=[source_fd, target_fd], user=uid, group=gid,
                         extra_groups=[], new_session=False)  # fmt: skip
    try:
        _, err = process.communicate(timeout=COPY_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise UserError(
            f"{share.option_path}: copying the home template took longer than "
            f"{COPY_SECONDS:g} s; make the template smaller") from None
    if process.returncode != 0:
        detail = err.decode(errors="replace").strip().splitlines()[-3:]
        raise UserError(
            f"{share.option_path}: the home template could not be copied as uid {uid} "
            f"({'; '.join(detail) or f'cp exited with status {process.returncode}'}); make "
            "the template's files readable by that user")


# -- starting and stopping virtiofsd -----------------------------------------------------------


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


def launch_command(share: Share, maps: IdMaps, argv: Sequence[str],
                   python: str = sys.executable, *, source_fd: int) -> list[str]:
    """virtiofsd's ``argv`` (whose shared directory is ``userns.SOURCE``) inside its user
    namespace and vmsilod's confinement, serving the directory open as ``source_fd`` (an
    ``O_PATH`` descriptor from ``source.open_source``, which the launcher must inherit)."""
    return userns.command(python, maps.uids, maps.gids, nofile=nofile_limit(),
                          capabilities=CAPABILITIES, source_fd=source_fd,
                          readonly=share.readonly, program=argv)  # fmt: skip


def _mapped(host_id: int, lines: Sequence[IdMapLine]) -> bool:
    return any(line.outside <= host_id < line.outside + line.count for line in lines)


def unreadable(source: Source, maps: IdMaps) -> bool:
    """True when virtiofsd, as the namespace's root, could not list and search the shared
    directory. Its capabilities count only on files whose owner and group the maps name;
    elsewhere the mode bits decide. A directory with an ACL is left to the kernel. The
    directories above it do not matter: virtiofsd gets the directory as a mount of its own."""
    st = source.stat
    if _mapped(st.st_uid, maps.uids) and _mapped(st.st_gid, maps.gids):
        return False
    if st.st_uid == maps.uids[0].outside:  # namespace id 0
        bits = (st.st_mode >> 6) & 0o7
    elif st.st_gid == maps.gids[0].outside:
        bits = (st.st_mode >> 3) & 0o7
    else:
        bits = st.st_mode & 0o7
    return bits & 0o5 != 0o5 and not _has_acl(source.proc_path)


def _has_acl(path: str) -> bool:
    try:
        return "system.posix_acl_access" in os.listxattr(path)
    except OSError:
        return False


def start(
    found: Virtiofsd,
    share: Share,
    settings: Virtiofs,
    maps: IdMaps,
    runtime: Dir,
    log_fd: int | None,
    log_path: Path,
) -> RunningShare:
    """Start virtiofsd for ``share``; ``log_fd`` (closed by the caller) takes its output,
    None for none. The share's path is resolved here, once, without following links, and
    virtiofsd serves the directory found (see the module docstring). Raises ``UserError``
    naming the share's option and the fix."""
    with open_source(share.source, share.option_path) as source:
        if unreadable(source, maps):
            st = source.stat
            raise UserError(
                f"{share.option_path}: virtiofsd runs as the VM's unprivileged ids and cannot "
                f"read {share.source}: it is mode {stat.S_IMODE(st.st_mode):04o}, owned by "
                f"{st.st_uid}:{st.st_gid}; let others read and search it (chmod o+rx "
                f"{share.source}), give it to the desktop user, or share a directory "
                "elsewhere")
        if not share.readonly and exposed(source):
            log.warning(
                "%s: %s can be reached by every local account, on a file system that honours "
                "setuid bits: a guest can leave setuid programs of the desktop user's there "
                "that any account could run; make a directory above it private (chmod o-x) "
                "or mount it nosuid", share.option_path, share.source)
        return _launch(found, share, settings, maps, runtime, log_fd, log_path, source)


def _launch(found: Virtiofsd, share: Share, settings: Virtiofs, maps: IdMaps, runtime: Dir,
            log_fd: int | None, log_path: Path, source: Source) -> RunningShare:
    name = directory_name(share.tag)
    directory = runtime.sub(name, fresh=True)
    try:
        sock = directory.listen_unix(SOCKET, backlog=1)
        try:
            argv = launch_command(
                share, maps,
                command(found, share.options, settings, source=userns.SOURCE,
                        fd=sock.fileno()), source_fd=source.fd)  # fmt: skip
            output: int = subprocess.DEVNULL if log_fd is None else log_fd
            process = proc.spawn(argv, stdout=output, stderr=output,
                                 pass_fds=[sock.fileno(), source.fd])
        finally:
            sock.close()
        try:
            identity = _await_exec(process, sys.executable)
            directory.write_atomic(RECORD, json.dumps(identity.to_json()))
        except BaseException:
            proc.stop(process, STOP_SECONDS)
            raise
    finally:
        directory.close()
    running = RunningShare(share.tag, runtime.path / name, process, identity,
                           Dir(os.dup(runtime.fd), runtime.path))
    time.sleep(START_CHECK_SECONDS)  # an option it rejects ends it at once
    if process.poll() is not None:
        stop(running)
        raise UserError(
            f"{share.option_path}: virtiofsd exited at start with status "
            f"{process.returncode}; see {log_path}"
        )
    return running


def _await_exec(process: subprocess.Popen[bytes], python: str) -> ProcessIdentity:
    """The process's identity once the launcher (``python``) has exec'd virtiofsd, or as it
    is when it ended or the bound passed (the start check then reports it)."""
    launcher = os.path.realpath(python)
    deadline = time.monotonic() + EXEC_SECONDS
    while True:
        identity = ProcessIdentity.of(process.pid)
        if identity is None or identity.exe != launcher or process.poll() is not None:
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    return identity or ProcessIdentity(process.pid, 0, launcher)


def adopt(runtime: Dir, tag: str) -> RunningShare | None:
    """The virtiofsd a previous vmsilod started for this share, if its recorded identity
    (pid, start time, executable) still names a live process."""
    name = directory_name(tag)
    try:
        with runtime.sub(name, create=False) as directory:
            identity = ProcessIdentity.from_json(json.loads(directory.read(RECORD)))
    except FileNotFoundError:
        return None
    except (OSError, UserError, ValueError) as exc:
        log.warning("virtiofsd of share %s: not adopted (%s)", tag, exc)
        return None
    if not identity.alive():
        return None
    return RunningShare(tag, runtime.path / name, None, identity,
                        Dir(os.dup(runtime.fd), runtime.path))


def stop(running: RunningShare) -> None:
    """End virtiofsd (if the VMM's exit has not already) and remove its directory."""
    if running.process is not None:
        proc.stop(running.process, STOP_SECONDS)
    else:
        _stop_adopted(running.identity)
    if running.runtime is not None:
        running.runtime.rmtree(directory_name(running.tag))
        running.runtime.close()
        running.runtime = None


def _stop_adopted(identity: ProcessIdentity) -> None:
    """SIGTERM, a bounded wait, SIGKILL — through a pidfd checked against the identity, so a
    reused pid is never signalled."""
    fd = identity.pidfd()
    if fd is None:
        return
    try:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(fd, signal.SIGTERM)
        poller = select.poll()
        poller.register(fd, select.POLLIN)  # readable once the process has ended
        if not poller.poll(STOP_SECONDS * 1000):
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            poller.poll(STOP_SECONDS * 1000)
    finally:
        os.close(fd)
