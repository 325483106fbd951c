"""Working inside vmsilod's own directories without following anything someone else planted.

vmsilod runs as root. Every file it writes or reads back (launch spec, network record, pid
records, sockets, logs, overlay disks) lives below a directory that only it can write, and is
reached through directory descriptors: each path component is opened with ``O_NOFOLLOW``
relative to the one before (``openat(2)``), every component must be owned by root or by us and
writable by nobody else (a sticky world-writable ancestor such as ``/tmp`` is allowed: others
cannot replace what we own inside it), and names inside are opened, renamed and removed
relative to the directory's descriptor. A symlink or a foreign owner anywhere on the way is a
``UnsafePath`` error naming the path and the fix, and nothing is created beyond it.

This is the same rule OpenSSH's ``StrictModes`` applies to ``~/.ssh``, applied to every path
root works in.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import stat
from pathlib import Path

from vmsilo.errors import UserError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Reading back our own records: nothing we write is anywhere near this big.
READ_LIMIT = 4 * 1024 * 1024


class UnsafePath(UserError):  # noqa: N818 - reads as the condition it reports
    """A path root was asked to work in is not root's (or ours) alone."""


def _trusted_owner(uid: int) -> bool:
    return uid in (0, os.geteuid())


def _check_component(st: os.stat_result, where: str, final: bool) -> None:
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"{where} is not a directory; move it away")
    if not _trusted_owner(st.st_uid):
        raise UnsafePath(
            f"{where} belongs to uid {st.st_uid}, not to uid {os.geteuid()} or root; vmsilo "
            "will not work in a directory someone else controls: remove it (or fix its "
            "owner) and try again")
    writable_by_others = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if final and (writable_by_others or st.st_uid != os.geteuid()):
        raise UnsafePath(
            f"{where} must be owned by uid {os.geteuid()} and writable by nobody else "
            f"(it is uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}); remove it and "
            "try again")
    if writable_by_others and not st.st_mode & stat.S_ISVTX:
        raise UnsafePath(
            f"{where} is writable by others (mode {stat.S_IMODE(st.st_mode):04o}); make it "
            "writable by its owner only, or move vmsilo's directories elsewhere")


class Dir:
    """An open directory of ours; every operation is relative to its descriptor."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path  # for messages and for children that need a path (under root's dirs)

    # -- opening ----------------------------------------------------------------------------

    @classmethod
    def secure(cls, path: Path, *, mode: int = 0o700, create: bool = True) -> Dir:
        """Open ``path`` (absolute) component by component, creating missing ones with
        ``mode`` when ``create``; every component must be trusted (see module docstring) and
        the last one ours alone. Raises ``UnsafePath``, or ``FileNotFoundError`` when a
        component is missing and ``create`` is false."""
        if not path.is_absolute():
            raise ValueError(f"{path}: an absolute path is needed")
        fd = os.open("/", _DIR_FLAGS)
        try:
            parts = [p for p in path.parts[1:] if p not in ("", ".")]
            if ".." in parts:
                raise ValueError(f"{path}: '..' is not allowed")
            current = Path("/")
            _check_component(os.fstat(fd), "/", final=not parts)
            for index, part in enumerate(parts):
                current = current / part
                final = index == len(parts) - 1
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, mode, dir_fd=fd)
                    child = _open_child(part, fd, current)
                    if final:
                        os.fchmod(child, mode)
                except OSError as exc:
                    raise _unsafe(exc, current) from exc
                os.close(fd)
                fd = child
                _check_component(os.fstat(fd), str(current), final=final)
            return cls(fd, path)
        except BaseException:
            os.close(fd)
            raise

    def sub(self, name: str, *, mode: int = 0o700, create: bool = True,
            fresh: bool = False, reclaim: bool = False) -> Dir:
        """A directory inside this one (ours alone). ``fresh`` removes whatever was there
        first, so it starts empty; ``reclaim`` removes it only if it is not ours (a link, a
        file, another owner's directory, one others may write: e.g. left by an older version
        that gave it to the desktop user) — safe because this directory is ours alone, and
        removal never follows a link."""
        _check_name(name)
        if fresh or (reclaim and not self._ours(name)):
            self.rmtree(name)
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=self.fd)
        except FileNotFoundError:
            if not create:
                raise
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, mode, dir_fd=self.fd)
            fd = _open_child(name, self.fd, self.path / name)
            os.fchmod(fd, mode)
        except OSError as exc:
            raise _unsafe(exc, self.path / name) from exc
        try:
            _check_component(os.fstat(fd), str(self.path / name), final=True)
        except BaseException:
            os.close(fd)
            raise
        return Dir(fd, self.path / name)

    def _ours(self, name: str) -> bool:
        try:
            st = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return True  # nothing to reclaim
        return (stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()
                and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))

    @classmethod
    def reclaimed(cls, path: Path, *, mode: int = 0o700, parent_mode: int = 0o755) -> Dir:
        """``secure(path)``, but a last component that is not ours is replaced (see
        ``sub``'s ``reclaim``) instead of refused."""
        with cls.secure(path.parent, mode=parent_mode) as parent:
            return parent.sub(path.name, mode=mode, reclaim=True)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)

    def __enter__(self) -> Dir:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- files ------------------------------------------------------------------------------

    def open(self, name: str, flags: int, mode: int = 0o600) -> int:
        """``openat`` with ``O_NOFOLLOW | O_CLOEXEC``; a symlink is an error (ELOOP)."""
        _check_name(name)
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=self.fd)

    def create(self, name: str, mode: int = 0o600, *, replace: bool = True) -> int:
        """A new, empty file opened for writing; whatever had the name before is removed
        first (``replace``), never written through."""
        if replace:
            self.unlink(name)
        return self.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)

    def write_atomic(self, name: str, data: bytes | str, mode: int = 0o600) -> None:
        """Write a whole file by renaming a complete temporary one over the name."""
        payload = data.encode() if isinstance(data, str) else data
        temporary = f".{name}.new-{os.getpid()}"
        fd = self.create(temporary, mode)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(payload)
            os.rename(temporary, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            self.unlink(temporary)
            raise

    def read(self, name: str, limit: int = READ_LIMIT) -> bytes:
        """A regular file of ours, at most ``limit`` bytes. ``FileNotFoundError`` if absent;
        ``UnsafePath`` if it is a link, not a regular file, or not ours."""
        try:
            fd = self.open(name, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise
            raise _unsafe(exc, self.path / name) from exc
        with os.fdopen(fd, "rb") as source:
            st = os.fstat(source.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                raise UnsafePath(f"{self.path / name} is not a regular file of uid "
                                 f"{os.geteuid()}; it was not written by vmsilo")
            data = source.read(limit + 1)
        if len(data) > limit:
            raise UnsafePath(f"{self.path / name} is larger than {limit} bytes; it was not "
                             "written by vmsilo")
        return data

    def exists(self, name: str) -> bool:
        _check_name(name)
        try:
            os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def lstat(self, name: str) -> os.stat_result:
        _check_name(name)
        return os.stat(name, dir_fd=self.fd, follow_symlinks=False)

    def rename(self, old: str, new: str) -> None:
        _check_name(old)
        _check_name(new)
        os.rename(old, new, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def unlink(self, name: str) -> None:
        """Remove a file, socket or link (never what a link points to); absent is fine."""
        _check_name(name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.fd)

    def rmtree(self, name: str) -> None:
        """Remove ``name`` and everything below it without following any link (Python's
        fd-based ``rmtree``); absent is fine."""
        _check_name(name)
        try:
            st = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            self.unlink(name)
            return
        assert shutil.rmtree.avoids_symlink_attacks
        shutil.rmtree(name, dir_fd=self.fd, ignore_errors=True)

    def names(self) -> list[str]:
        return sorted(os.listdir(self.fd))

    # -- sockets ----------------------------------------------------------------------------

    def _proc_path(self, name: str) -> str:
        # The directory's descriptor as a path: resolving it cannot be redirected by a rename
        # or a link planted on the way, unlike the directory's own path.
        return f"/proc/self/fd/{self.fd}/{name}"

    def listen_unix(self, name: str, backlog: int = 16) -> socket.socket:
        """A listening unix socket at ``name`` (replacing a stale one)."""
        _check_name(name)
        self.unlink(name)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(self._proc_path(name))
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        return sock

    def connect_unix(self, name: str, timeout: float | None = 10.0) -> socket.socket:
        """Connect to the socket ``name`` of this directory (a link is refused)."""
        st = self.lstat(name)
        if not stat.S_ISSOCK(st.st_mode):
            raise UnsafePath(f"{self.path / name} is not a socket")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(timeout)
        try:
            sock.connect(self._proc_path(name))
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)
        return sock


def _check_name(name: str) -> None:
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise ValueError(f"{name!r} is not a plain file name")


def _open_child(name: str, parent: int, where: Path) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        raise _unsafe(exc, where) from exc


def _unsafe(exc: OSError, where: Path) -> OSError | UnsafePath:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return UnsafePath(f"{where} is a symbolic link or not a directory; vmsilo will not "
                          "follow it: remove it and try again")
    return exc


def remove_tree(path: Path) -> None:
    """Remove ``path`` (in a directory of ours) without following links; absent is fine,
    and so is a parent that does not exist."""
    try:
        with Dir.secure(path.parent, create=False) as parent:
            parent.rmtree(path.name)
    except FileNotFoundError:
        return
