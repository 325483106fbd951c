"""An unpacked image root, read and cleaned by host root with every path resolved inside it.

The build's pack hook runs as host root (or as root of mmdebstrap's user namespace, which owns
the build directory) over a tree that the image's packages, maintainer scripts and
``guestConfig`` commands wrote. Any path in that tree may be a symlink, and an absolute one
(``/etc/shadow``) or one climbing with ``..`` means the *host's* file to the kernel. So nothing
here hands an image path to the kernel to resolve. ``ImageRoot`` walks each path itself, one
component at a time relative to a directory descriptor (``openat(2)`` with ``O_NOFOLLOW``),
with the semantics of ``openat2(2)``'s ``RESOLVE_IN_ROOT | RESOLVE_NO_XDEV``:

- a symlink is read (``readlinkat``) and its target spliced into the rest of the path; an
  absolute target restarts at the image root, so ``/usr/lib/app/x.png`` means the image's;
- ``..`` goes up one directory actually walked, and stops at the image root;
- at most ``MAX_SYMLINKS`` (40, as the kernel) links per path: more is a loop (``ELOOP``);
- no mount point is crossed: while hooks run, mmdebstrap has the host's ``/proc``, ``/sys``
  and device nodes mounted inside the root, and ``/proc/1/environ`` or ``/dev/sda`` reached
  "inside" the root are still the host's. Anything on another filesystem than the root's
  directory is refused (``EXDEV``);
- reads take regular files only (opened ``O_NONBLOCK`` so a FIFO cannot hang the build, and
  checked with ``fstat`` on the descriptor actually read), size-capped by the caller;
- changes (``clean_dir``, ``remove``, ``write_empty``) never follow the last component: a
  symlink where a directory to empty or a file to truncate was expected is removed itself,
  its target is never touched.

Errors are ``ImagePathError`` (an ``OSError`` carrying the errno and the image path).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

MAX_SYMLINKS = 40
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class ImagePathError(OSError):
    """An image path that cannot be used safely (or does not exist); ``filename`` is the path
    as the image named it."""

    def __init__(self, code: int, path: str, why: str) -> None:
        super().__init__(code, f"image path {path}: {why}", path)


def _parts(path: str) -> list[str]:
    """Components of ``path``. "." stays (``file/.`` is ENOTDIR, as to the kernel) and a
    trailing "/" becomes "." (it too says "a directory")."""
    parts = path.split("/")
    trailing = len(parts) > 1 and parts[-1] == "" and any(parts[:-1])
    return [p for p in parts if p != ""] + (["."] if trailing else [])


class ImageRoot:
    """The image root at ``path``: the directory mmdebstrap hands the hook (trusted itself;
    everything below it is not). Use as a context manager, or ``close()`` it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, _DIR_FLAGS)
        self.dev = os.fstat(self.fd).st_dev

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> ImageRoot:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- resolution -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _parent(self, path: str, *, follow_last: bool) -> Iterator[tuple[int, str]]:
        """The directory (an open descriptor, valid inside the ``with``) holding the last
        component of ``path`` resolved inside the root, and that component's name. With
        ``follow_last`` the name is never a symlink (links are followed, inside the root);
        without it, it is the path's own last name. Raises ``ImagePathError``."""
        pending = _parts(path) or ["."]  # "" or "/": the root itself
        stack = [os.dup(self.fd)]
        links = 0
        try:
            while True:
                name = pending.pop(0)
                if name == "..":
                    if len(stack) > 1:
                        os.close(stack.pop())
                    if not pending:
                        pending.append(".")  # the directory reached: "." in it
                    continue
                here = stack[-1]
                last = not pending
                if name == "." and not last:
                    continue  # the directory we are in (what came before it was one)
                if last and not follow_last:
                    if name == ".":
                        raise ImagePathError(errno.EINVAL, path, "names a directory by '..' "
                                             "or '/': give its own name to change it")
                    yield here, name
                    return
                try:
                    st = os.stat(name, dir_fd=here, follow_symlinks=False)
                except OSError as exc:
                    raise ImagePathError(exc.errno or errno.ENOENT, path,
                                         f"{name}: {exc.strerror}") from exc
                if stat.S_ISLNK(st.st_mode):
                    links += 1
                    if links > MAX_SYMLINKS:
                        raise ImagePathError(errno.ELOOP, path, "too many symbolic links")
                    target = os.readlink(name, dir_fd=here)
                    if target.startswith("/"):
                        # Absolute: the image's root, never the host's.
                        for fd in stack[1:]:
                            os.close(fd)
                        del stack[1:]
                    pending[:0] = _parts(target) or ["."]  # a link to "/" or "."
                    continue
                if st.st_dev != self.dev:
                    raise ImagePathError(errno.EXDEV, path, f"{name} is on another filesystem "
                                         "(a mount point) than the image root")
                if last:
                    yield here, name
                    return
                if not stat.S_ISDIR(st.st_mode):
                    raise ImagePathError(errno.ENOTDIR, path, f"{name} is not a directory")
                try:
                    stack.append(os.open(name, _DIR_FLAGS, dir_fd=here))
                except OSError as exc:  # replaced since the stat: a race, refused
                    raise ImagePathError(exc.errno or errno.EIO, path,
                                         f"{name}: {exc.strerror}") from exc
        finally:
            for fd in stack:
                os.close(fd)

    def _open(self, path: str, flags: int) -> int:
        """A descriptor of ``path`` resolved inside the root, on the root's filesystem."""
        with self._parent(path, follow_last=True) as (parent, name):
            try:
                fd = os.open(name, flags, dir_fd=parent)
            except OSError as exc:
                raise ImagePathError(exc.errno or errno.EIO, path,
                                     f"{name}: {exc.strerror}") from exc
        if os.fstat(fd).st_dev != self.dev:
            os.close(fd)
            raise ImagePathError(errno.EXDEV, path, "is on another filesystem than the root")
        return fd

    def resolve(self, path: str) -> PurePosixPath:
        """Where ``path`` leads inside the image, as an absolute image path (for messages and
        tests; never hand the result to the kernel as a host path)."""
        fd = self._open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            real = Path(os.readlink(f"/proc/self/fd/{fd}"))
        finally:
            os.close(fd)
        return PurePosixPath("/") / real.relative_to(Path(os.readlink(f"/proc/self/fd/{self.fd}")))

    # -- reading ----------------------------------------------------------------------------

    def stat(self, path: str) -> os.stat_result:
        """``stat`` of what ``path`` leads to inside the root."""
        with self._parent(path, follow_last=True) as (parent, name):
            return os.stat(name, dir_fd=parent, follow_symlinks=False)

    def is_file(self, path: str) -> bool:
        try:
            return stat.S_ISREG(self.stat(path).st_mode)
        except OSError:
            return False

    def is_dir(self, path: str) -> bool:
        try:
            return stat.S_ISDIR(self.stat(path).st_mode)
        except OSError:
            return False

    def listdir(self, path: str) -> list[str]:
        """Names in the directory ``path`` leads to (sorted)."""
        fd = self._open(path, _DIR_FLAGS)
        try:
            return sorted(os.listdir(fd))
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def open_file(self, path: str, limit: int | None = None) -> Iterator[tuple[int, int]]:
        """``(descriptor, size)`` of the regular file ``path`` leads to; refused when it is
        anything else or larger than ``limit`` bytes."""
        fd = self._open(path, _READ_FLAGS)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ImagePathError(errno.EINVAL, path, "is not a regular file")
            if limit is not None and st.st_size > limit:
                raise ImagePathError(errno.EFBIG, path,
                                     f"is {st.st_size} bytes, more than the {limit} allowed")
            os.set_blocking(fd, True)
            yield fd, st.st_size
        finally:
            os.close(fd)

    def read_bytes(self, path: str, limit: int | None = None) -> bytes:
        with self.open_file(path, limit) as (fd, size):
            chunks = []
            remaining = size if limit is None else min(size, limit)
            while remaining > 0:  # the size fstat saw: a file growing meanwhile is cut there
                chunk = os.read(fd, min(remaining, 1 << 20))
                if not chunk:
                    break
                chunks.append(chunk)
                remaining -= len(chunk)
            return b"".join(chunks)

    def read_text(self, path: str, limit: int | None = None) -> str:
        return self.read_bytes(path, limit).decode(errors="replace")

    def copy_out(self, path: str, destination: Path, limit: int | None = None) -> None:
        """Copy the regular file ``path`` leads to into ``destination`` (a host path we own,
        created or replaced)."""
        with self.open_file(path, limit) as (fd, _size), \
                open(fd, "rb", closefd=False) as source, open(destination, "wb") as sink:
            shutil.copyfileobj(source, sink)

    # -- changing ---------------------------------------------------------------------------

    def remove(self, path: str) -> None:
        """Remove the last component of ``path`` itself (a file, a symlink, or a directory
        tree, never a link's target); missing is fine."""
        try:
            with self._parent(path, follow_last=False) as (parent, name):
                _remove_at(parent, name)
        except ImagePathError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                raise

    def clean_dir(self, path: str, keep: Callable[[str, bool], bool] = lambda _n, _d: False,
                  ) -> None:
        """Empty the directory ``path`` names (its parents resolved inside the root). Children
        for which ``keep(name, is_dir)`` is true stay. A symlink (or anything not a directory)
        at ``path`` is removed itself; a missing one is fine."""
        try:
            with self._parent(path, follow_last=False) as (parent, name):
                try:
                    st = os.stat(name, dir_fd=parent, follow_symlinks=False)
                except FileNotFoundError:
                    return
                if not stat.S_ISDIR(st.st_mode):
                    os.unlink(name, dir_fd=parent)
                    return
                if st.st_dev != self.dev:
                    raise ImagePathError(errno.EXDEV, path, "is a mount point; not emptied")
                fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except ImagePathError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return
            raise
        try:
            for child in os.listdir(fd):
                child_st = os.stat(child, dir_fd=fd, follow_symlinks=False)
                if not keep(child, stat.S_ISDIR(child_st.st_mode)):
                    _remove_at(fd, child)
        finally:
            os.close(fd)

    def write_empty(self, path: str, mode: int = 0o444) -> None:
        """Make ``path`` an empty regular file: whatever was there (a symlink included) is
        replaced, never written through."""
        with self._parent(path, follow_last=False) as (parent, name):
            with contextlib.suppress(FileNotFoundError):
                _remove_at(parent, name)
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, mode, dir_fd=parent)
            try:
                os.fchmod(fd, mode)  # exactly ``mode``, whatever the umask
            finally:
                os.close(fd)


def _remove_at(parent: int, name: str) -> None:
    st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    if stat.S_ISDIR(st.st_mode):
        # rmtree with dir_fd works by descriptors and never follows a link inside the tree.
        shutil.rmtree(name, dir_fd=parent)
    else:
        os.unlink(name, dir_fd=parent)
