"""A share's host directory, opened once by vmsilod without following any link: the descriptor
virtiofsd ends up serving.

A share's path often runs through directories someone else can write: the desktop user's
home, or a folder another VM shares read-write. If anything looked the path up by name after
the config was read (a check, a bind, virtiofsd's own open), whoever can write a directory on
the way could swap a component for a symbolic link between two lookups, or before the VM's
next start, and the VM would be served the link's target: the user's private files, or ``/``.

So vmsilod resolves the path exactly once, from ``/``, one component at a time, each opened
``O_PATH | O_NOFOLLOW | O_DIRECTORY`` relative to the one before (``openat(2)``): a symbolic
link anywhere on the way is refused, naming the share's option and the fix, and so are a
missing component, one that is not a directory, and ``..``. Any owner is fine (a share is
usually the desktop user's directory). The resulting ``O_PATH`` descriptor names the directory
itself (an inode, not a path); ``vmsilo.shares.userns`` clones a mount of exactly that
directory from it and gives virtiofsd that mount's fixed path, so renaming or replacing
anything on the old path later, while virtiofsd runs, changes nothing it serves.

The stat of each component is kept for the checks made on the same objects: whether
virtiofsd's ids can read the directory (``runner.unreachable``), and whether every local
account can reach it on a file system that honours setuid bits (``exposed``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from vmsilo.errors import UserError

# O_PATH: no read permission is needed and nothing is opened for I/O (the kernel only pins
# the inode); O_NOFOLLOW|O_DIRECTORY: a link (or anything not a directory) fails to open.
_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
_LINK_FIX = (
    "vmsilo follows no link on the way to a share, because whoever can write a folder on the "
    "way (you, or a guest sharing it) could point the link elsewhere: replace the link by "
    "the real directory, or set the path to the directory's real location (no link in it)")


@dataclass
class Source:
    """An open share directory: ``fd`` (``O_PATH``, close-on-exec; ``close`` it) and the
    stat of every component from ``/`` to the directory itself, as opened."""

    path: Path
    fd: int
    chain: list[tuple[Path, os.stat_result]] = field(repr=False)

    @property
    def stat(self) -> os.stat_result:
        return self.chain[-1][1]

    @property
    def proc_path(self) -> str:
        """The directory through our own descriptor (follows no path of anyone's)."""
        return f"/proc/self/fd/{self.fd}"

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def open_source(path: Path, option_path: str) -> Source:
    """Open ``path`` (absolute) as described in the module docstring. Raises ``UserError``
    starting with ``option_path``: a link, a missing component, a non-directory, ``..``."""
    text = str(path)
    if not path.is_absolute():
        raise UserError(f"{option_path}: {text} is not an absolute path; write a path "
                        "starting with '/'")
    parts = [part for part in text.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UserError(f"{option_path}: {text} contains '..'; vmsilo opens a share one "
                        "folder at a time and never goes back up: write the path without '..'")
    fd = os.open("/", _FLAGS)
    current = Path("/")
    chain = [(current, os.fstat(fd))]
    try:
        for part in parts:
            current = current / part
            try:
                child = os.open(part, _FLAGS, dir_fd=fd)
            except OSError as exc:
                raise _refusal(exc, fd, part, current, path, option_path) from exc
            os.close(fd)
            fd = child
            chain.append((current, os.fstat(fd)))
    except BaseException:
        os.close(fd)
        raise
    return Source(path, fd, chain)


def _refusal(exc: OSError, parent_fd: int, name: str, where: Path, path: Path,
             option_path: str) -> UserError:
    """What is wrong with ``name`` in ``parent_fd`` (which failed to open), as a UserError."""
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except OSError:
        st = None
    if st is not None and stat.S_ISLNK(st.st_mode):
        try:
            target = f" (to {os.readlink(name, dir_fd=parent_fd)!r})"
        except OSError:
            target = ""
        on_the_way = "" if where == path else f", on the way to {path}"
        return UserError(f"{option_path}: {where} is a symbolic link{target}{on_the_way}; "
                         f"{_LINK_FIX}")
    if exc.errno == errno.ENOENT:
        return UserError(f"{option_path}: {where} does not exist on the host; create "
                         f"{path} or fix the path")
    if (st is not None and not stat.S_ISDIR(st.st_mode)) or exc.errno == errno.ENOTDIR:
        return UserError(f"{option_path}: {where} is not a directory on the host; fix the "
                         "path (a share is a directory)")
    return UserError(f"{option_path}: cannot open {where} ({exc.strerror}); fix the path or "
                     "the folder's permissions")


def exposed(source: Source) -> bool:
    """True when every local account can reach the share (each directory above it lets
    others search it; the share's own mode is the guest's to change when it is the user's)
    and its file system honours setuid bits: then a setuid program of the desktop user's
    that a guest leaves there can be run by any account."""
    above = source.chain[:-1]
    if not all(st.st_mode & stat.S_IXOTH for _, st in above):
        return False
    with contextlib.suppress(OSError):
        if os.fstatvfs(source.fd).f_flag & os.ST_NOSUID:  # fstatfs works on O_PATH
            return False
    return True
