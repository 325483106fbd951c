"""Opening a path the config names (a disk, a kernel) for a jailed VMM, without lending root's
power to whoever controls the path.

Root may open a path itself only when nobody else could have chosen what it leads to: every
directory on the way (and every symbolic link followed) belongs to root (or to vmsilod's own
uid) and is writable by nobody else — in a sticky directory such as ``/tmp`` the entry itself
must be root's. Anything else (a disk image in the desktop user's home, say) is opened as the
desktop user: a child that has dropped to their uid and gid (no groups) opens it with the
access the VMM needs, so the kernel checks the user's rights, and root then takes that very
open file over through ``/proc/<child>/fd/3`` (which names the inode the child opened, not the
path: a link swapped in afterwards changes nothing). A user can thus never make root hand a
VM a file the user could not have opened, such as ``/etc/shadow`` or a disk device.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import subprocess
from collections import deque
from pathlib import Path

from vmsilo.errors import UserError
from vmsilo.host import proc

MAX_LINKS = 40  # as the kernel's own limit on links followed in one lookup
OPEN_TIMEOUT = 10.0


def _trusted(dir_st: os.stat_result, entry_st: os.stat_result) -> bool:
    ours = (0, os.geteuid())
    if dir_st.st_uid not in ours:
        return False
    if dir_st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        # Others may write here: only a sticky directory keeps them off root's entries.
        return bool(dir_st.st_mode & stat.S_ISVTX) and entry_st.st_uid in ours
    return True


def open_if_root_controlled(path: Path, flags: int) -> int | None:
    """``path`` opened with ``flags`` (plus ``O_NOFOLLOW | O_CLOEXEC``) if every directory
    and link on the way is root's alone; None if anything on the way is someone else's.
    Raises ``OSError`` for what would fail anyway (a missing file)."""
    if not path.is_absolute():
        raise ValueError(f"{path}: an absolute path is needed")
    parts = deque(p for p in path.parts[1:])
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    links = 0
    try:
        while parts:
            name = parts.popleft()
            if name in ("", "."):
                continue
            if name == "..":
                return None  # kept simple: such paths are opened as the user
            entry = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if not _trusted(os.fstat(fd), entry):
                return None
            if stat.S_ISLNK(entry.st_mode):
                links += 1
                if links > MAX_LINKS or entry.st_uid not in (0, os.geteuid()):
                    return None
                target = os.readlink(name, dir_fd=fd)
                parts.extendleft(reversed(Path(target).parts))
                if target.startswith("/"):
                    parts.popleft()  # the "/" part
                    os.close(fd)
                    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                continue
            if parts:
                child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                                | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd = child
                continue
            return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        return None
    finally:
        os.close(fd)


# The child: opens "$1" as descriptor 3 with the access asked for ("r" or "rw", never
# creating it), says so, and holds it until root has taken it over (its stdin closes).
_CHILD = ('[ -e "$1" ] || { echo "No such file or directory" >&2; exit 2; }; '
          'if [ "$2" = rw ]; then exec 3<>"$1"; else exec 3<"$1"; fi || exit 1; '
          'echo open; read -r _')


def open_as_user(path: Path, flags: int, user: tuple[int, int]) -> int:
    """``path`` opened with ``flags`` by root, after a child running as ``user`` (uid, gid;
    no groups) proved it may open it with the same access. ``OSError`` if it may not."""
    access = "rw" if flags & os.O_ACCMODE != os.O_RDONLY else "r"
    uid, gid = user
    child = proc.spawn(["sh", "-c", _CHILD, "sh", str(path), access], stdin=subprocess.PIPE,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, user=uid, group=gid,
                       extra_groups=[], new_session=True, env={"PATH": "/usr/bin:/bin"})
    assert child.stdin is not None and child.stdout is not None and child.stderr is not None
    try:
        try:
            said = child.stdout.readline()
        except OSError:
            said = b""
        if said != b"open\n":
            child.wait(OPEN_TIMEOUT)
            reason = child.stderr.read().decode(errors="replace").strip().splitlines()
            raise OSError(errno.EACCES, f"{path}: the desktop user (uid {uid}) cannot open it "
                          f"({reason[-1] if reason else 'refused'})")
        # The child's descriptor 3 names the very inode it opened: take it over as root.
        return os.open(f"/proc/{child.pid}/fd/3", flags | os.O_CLOEXEC)
    finally:
        with contextlib.suppress(OSError):
            child.stdin.close()
        proc.stop(child, grace=1.0)
        for stream in (child.stdout, child.stderr):
            stream.close()


def open_for_vmm(path: Path, flags: int, user: tuple[int, int] | None, what: str) -> int:
    """Open a path from the config for the VMM: by root where root alone controls the path,
    else as ``user`` (None: vmsilod is not root, so it opens as itself). Raises ``UserError``
    naming ``what`` (e.g. the option) and the reason."""
    try:
        fd = open_if_root_controlled(path, flags)
        if fd is not None:
            return fd
        if user is None or os.geteuid() != 0:
            return os.open(path, flags | os.O_CLOEXEC)
        return open_as_user(path, flags, user)
    except OSError as exc:
        raise UserError(f"{what}: cannot open {path}: {exc.strerror or exc}; it must be a "
                        "file the desktop user may open (or root's alone)") from exc
