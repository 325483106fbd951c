"""Capped log files: a small pump process carries children's output from pipes into log files
of vmsilod's own log directory, and never lets one log take more than ``2 * cap`` bytes.

vmsilod (root) no longer hands a child a descriptor of a file it opened by path, and no log
grows without bound: a guest printing forever on its console, or a helper stuck in a loop of
warnings, cannot fill the host's disk. Instead each log is a pipe. Its write end goes to the
child (stdout/stderr, or QEMU's ``-add-fd`` for a chardev ``logfile=/dev/fdset/N``); its read
end goes to a pump process (``python -m vmsilo.host.logpump``) that also inherits the log
directory as a descriptor (a ``safefs.Dir`` of the caller) and works only relative to it,
never following a link: files are created ``O_CREAT | O_EXCL | O_NOFOLLOW`` after removing
whatever had the name, and renamed within the directory (``rename(2)`` moves a link, never
what it points to).

Size cap: when writing would take ``<name>`` past ``cap`` bytes (``CAP``, 8 MiB, unless the
caller says otherwise), it is renamed to ``<name>.1`` (replacing the older one) and a new
``<name>`` begins, so a log holds at most ``2 * cap`` bytes on disk. The cut is at a byte,
not a line: a line may continue in the next file. At start the pump can rotate an existing
``<name>`` to ``<name>.1``: each VM start gets a fresh log, the previous start's kept.

The pump never blocks its writers for long and never makes them fail: it reads as fast as it
can (a 1 MiB pipe buffer absorbs bursts), and when the disk refuses a write (full, quota, I/O
error) it drops the data, keeps reading, and notes in the log how much it dropped once writing
works again. It ends at end of file, when every writer has closed its end. Like the VMM whose
output it carries it runs in its own session: it outlives a restart of vmsilod, which never
needs to adopt it.

The process imports nothing beyond a few builtin modules (``start``, vmsilod's side, imports
its spawning machinery when called): a pump costs ~3 MiB, not the ~8 MiB of an interpreter
with asyncio and dataclasses loaded, and a VM has several.

Boundaries: this module does not decide which logs exist or where their directory is (the
caller's ``Dir``), and does not look at what it copies (bytes in, bytes out).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import stat
import sys
import time

from vmsilo.errors import UserError

# typing.TYPE_CHECKING without importing typing (and re, with it) into every pump; mypy
# treats any name TYPE_CHECKING this way.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    from collections.abc import Sequence
    from pathlib import Path

    from vmsilo.host.safefs import Dir

# One log's size before it is rotated. A console that printed for hours of normal use fits;
# a log and its previous generation hold at most 16 MiB. A VM has a few logs (console, VMM,
# one per helper), so the worst case per VM is tens of MiB, never the disk.
CAP = 8 * 1024 * 1024
# Smaller caps would rotate on nearly every read.
MIN_CAP = 4096
# Bytes per read: what GNU cat uses (128 KiB); the kernel returns less when less is waiting.
READ_SIZE = 128 * 1024
# The pipe's buffer: a writer blocks only while this much is waiting. 1 MiB is the ceiling for
# unprivileged pipes (/proc/sys/fs/pipe-max-size); vmsilod is root and may set it anyway.
PIPE_SIZE = 1024 * 1024
# After a failed write, data read during this many seconds is dropped (and counted) without
# trying again, so a full disk does not turn the pump into a busy loop of failing writes.
RETRY_INTERVAL = 1.0
# How long ``start`` waits for the pump to report that its logs are open.
START_TIMEOUT = 10.0
ROTATED_SUFFIX = ".1"
FILE_MODE = 0o600

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_APPEND = os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC


class LogPumpError(UserError):
    """The pump could not start; the message names the logs, their directory and why."""


# -- the pump process ---------------------------------------------------------------------------


class CappedLog:
    """One log file ``name`` in the directory open as ``dir_fd``, written through ``write``
    and rotated to ``<name>.1`` before it would pass ``cap`` bytes.

    Opening: with ``rotate_at_start`` an existing regular ``<name>`` becomes ``<name>.1`` and
    a new, empty ``<name>`` is created; without it, writing continues at the end of an
    existing regular file of ours with a single link. Anything else at the name (a symbolic
    link, a hard link, a FIFO, a socket, a device) is removed, never opened; a directory
    there is an error. Opening raises ``OSError``; writing never raises (see ``write``).
    Every file the log writes gets ``mode`` exactly (whatever the umask) and, when ``group`` is
    given, that group (say the desktop user's, with ``mode`` 0640, to let them read it).
    ``where`` is the directory's path, for messages only.
    """

    def __init__(self, dir_fd: int, name: str, *, cap: int = CAP,
                 rotate_at_start: bool = True, mode: int = FILE_MODE, group: int | None = None,
                 where: str = "") -> None:
        if cap < MIN_CAP:
            raise ValueError(f"log cap {cap} is below the minimum of {MIN_CAP} bytes")
        _check_name(name)
        self.dir_fd = dir_fd
        self.name = name
        self.rotated = name + ROTATED_SUFFIX
        self.cap = cap
        self.mode = mode
        self.group = group
        self.where = where or f"/proc/self/fd/{dir_fd}"
        self.size = 0  # bytes in the current file
        self.dropped = 0  # bytes lost since the last successful write
        self.last_error = ""
        self._failing = False
        self._retry_at = 0.0
        self._fd: int | None = None
        self._open(rotate_at_start)

    def _open(self, rotate: bool) -> None:
        try:
            st = os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            self._create()
            return
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, f"{self.where}/{self.name} is a directory, "
                                    "not a log; remove it")
        regular = stat.S_ISREG(st.st_mode)
        if rotate and regular:
            # A regular file with more than one link is rotated too: a rename moves the name
            # and the next rotation removes it; nothing is ever written through it.
            self._rename()
        elif not rotate and regular and st.st_nlink == 1 and st.st_uid == os.geteuid():
            # Non-blocking, and checked to be the file just looked at: should anything have
            # replaced it (a FIFO would block an open for writing), start afresh instead.
            fd = os.open(self.name, _APPEND, dir_fd=self.dir_fd)
            opened = os.fstat(fd)
            if (opened.st_dev, opened.st_ino) == (st.st_dev, st.st_ino):
                os.set_blocking(fd, True)
                self._set_owner(fd)
                self.size = os.lseek(fd, 0, os.SEEK_END)
                self._fd = fd
                return
            os.close(fd)
        self._create()

    def _rename(self) -> None:
        os.rename(self.name, self.rotated, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)

    def _create(self) -> None:
        # Whatever has the name is removed (a link, never its target) and the file is created
        # exclusively without following links: a link planted in between fails the open
        # (EEXIST), it cannot redirect it.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.name, dir_fd=self.dir_fd)
        fd = os.open(self.name, _CREATE, self.mode, dir_fd=self.dir_fd)
        try:
            self._set_owner(fd)
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        self.size = 0

    def _set_owner(self, fd: int) -> None:
        if self.group is not None:
            os.fchown(fd, -1, self.group)
        os.fchmod(fd, self.mode)

    def _rotate(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        with contextlib.suppress(FileNotFoundError):  # removed under us: start afresh
            self._rename()
        self._create()

    def write(self, data: bytes) -> None:
        """Append ``data``, rotating whenever the file would pass the cap.

        Never raises for the disk's sake: on an error (``ENOSPC``, ``EDQUOT``, ``EIO``, the
        directory gone) the unwritten rest of ``data`` is dropped and counted, and so is all
        data given in the next ``RETRY_INTERVAL`` seconds. The first write after that tries
        again (recreating the file if it is gone), starting with a line that says how many
        bytes were dropped and why."""
        if self._failing and time.monotonic() < self._retry_at:
            self.dropped += len(data)
            return
        if self.dropped:
            note = (f"\n[vmsilo log pump: {self.dropped} bytes dropped: "
                    f"{self.last_error}]\n").encode()
            if not self._write_all(note, count=False):
                self.dropped += len(data)
                return
            self.dropped = 0
        self._write_all(data)

    def _write_all(self, data: bytes, *, count: bool = True) -> bool:
        view = memoryview(data)
        try:
            if self._fd is None:
                self._create()
            while view:
                room = self.cap - self.size
                if room <= 0:
                    self._rotate()
                    room = self.cap
                assert self._fd is not None
                written = os.write(self._fd, view[:room])
                self.size += written
                view = view[written:]
        except OSError as exc:
            self.last_error = exc.strerror or str(exc)
            self._failing = True
            self._retry_at = time.monotonic() + RETRY_INTERVAL
            if count:
                self.dropped += len(view)
            return False
        self._failing = False
        return True

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def pump(sources: dict[int, CappedLog]) -> None:
    """Copy each descriptor of ``sources`` (read ends of pipes) into its log until every one
    is at end of file. A source that ends is closed with its log and removed from
    ``sources``, so after an exception what is left there is still open."""
    if len(sources) == 1:  # the common case: no poll per read
        [(fd, log)] = sources.items()
        while data := os.read(fd, READ_SIZE):
            log.write(data)
        _end(sources, fd)
        return
    poller = select.poll()
    for fd in sources:
        poller.register(fd, select.POLLIN)
    while sources:
        for fd, _ in poller.poll():
            data = os.read(fd, READ_SIZE)
            if data:
                sources[fd].write(data)
                continue
            poller.unregister(fd)
            _end(sources, fd)


def _end(sources: dict[int, CappedLog], fd: int) -> None:
    os.close(fd)
    sources.pop(fd).close()


def drain(fds: Sequence[int]) -> None:
    """Read and discard until end of file on each of ``fds``: after an internal error the
    writers must still never block or see a broken pipe."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    remaining = set(fds)
    while remaining:
        for fd, _ in poller.poll():
            try:
                data = os.read(fd, READ_SIZE)
            except OSError:
                data = b""
            if not data:
                poller.unregister(fd)
                remaining.discard(fd)


USAGE = ("usage: python -m vmsilo.host.logpump --dir-fd FD [--dir-path PATH] [--status-fd FD] "
         "[--cap BYTES] [--mode OCTAL] [--group GID] [--rotate] FD:NAME...")


class _Arguments:
    """The pump's command line, as ``start`` writes it (argparse alone would add ~1.4 MiB
    to every pump)."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.dir_fd = -1
        self.dir_path = ""
        self.status_fd: int | None = None
        self.cap = CAP
        self.mode = FILE_MODE
        self.group: int | None = None
        self.rotate = False
        self.sources: list[tuple[int, str]] = []
        words = list(argv)
        while words:
            word = words.pop(0)
            if word == "--rotate":
                self.rotate = True
            elif word in ("--dir-fd", "--dir-path", "--status-fd", "--cap", "--mode",
                          "--group"):
                if not words:
                    raise ValueError(f"{word} needs a value")
                self._option(word, words.pop(0))
            elif word.startswith("-"):
                raise ValueError(f"unknown option {word}")
            else:
                fd, sep, name = word.partition(":")
                if not sep or not fd.isdigit():
                    raise ValueError(f"{word!r}: expected FD:NAME")
                self.sources.append((int(fd), name))
        if self.dir_fd < 0 or not self.sources:
            raise ValueError("--dir-fd and at least one FD:NAME are needed")

    def _option(self, word: str, value: str) -> None:
        if word == "--dir-path":
            self.dir_path = value
        elif word == "--mode":
            self.mode = int(value, 8)
        else:
            number = int(value)
            if word == "--dir-fd":
                self.dir_fd = number
            elif word == "--status-fd":
                self.status_fd = number
            elif word == "--group":
                self.group = number
            else:
                self.cap = number


def _report(status_fd: int | None, message: str) -> None:
    """Tell ``start`` how opening went ("ok" or the error) and close the status pipe."""
    if status_fd is None:
        if message != "ok":
            print(message, file=sys.stderr)
        return
    with contextlib.suppress(OSError):  # start gave up waiting: nobody to tell
        os.write(status_fd, message.encode(errors="replace"))
    os.close(status_fd)


def main(argv: Sequence[str] | None = None) -> int:
    """The pump process: open every log, report on the status pipe, copy until every source
    ends. Exit status 0 at the end of all input, 1 if a log could not be opened, 2 for a bad
    command line."""
    try:
        args = _Arguments(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:
        print(f"{exc}\n{USAGE}", file=sys.stderr)
        return 2
    where = args.dir_path or f"/proc/self/fd/{args.dir_fd}"
    logs: dict[int, CappedLog] = {}
    for fd, name in args.sources:
        try:
            logs[fd] = CappedLog(args.dir_fd, name, cap=args.cap, rotate_at_start=args.rotate,
                                 mode=args.mode, group=args.group, where=where)
        except OSError as exc:
            _report(args.status_fd, exc.strerror if exc.filename is None and exc.strerror
                    else f"{where}/{name}: {exc.strerror or exc}")
            return 1
        except ValueError as exc:
            _report(args.status_fd, f"{where}/{name}: {exc}")
            return 1
    _report(args.status_fd, "ok")
    try:
        pump(logs)
    except Exception as exc:  # a bug: say so in the logs still open, keep the writers going
        for log in logs.values():
            log.write(f"\n[vmsilo log pump: stopped by an internal error: {exc!r}]\n".encode())
            log.close()
        drain(list(logs))
        return 1
    return 0


def _check_name(name: str) -> None:
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise ValueError(f"{name!r} is not a plain file name")


# -- vmsilod's side -------------------------------------------------------------------------------


class LogPump:
    """A running pump (``process``) and the write ends of its pipes (``write_fds``: log name
    -> descriptor, ``O_CLOEXEC``, owned by the caller).

    Hand each write end to the child that writes the log: ``stdout=``/``stderr=`` of
    ``proc.spawn``, or ``pass_fds`` plus ``-add-fd fd=N,set=S`` for a QEMU chardev's
    ``logfile=/dev/fdset/S``. Then call ``close_write_ends``: the pump sees end of file once
    the last child holding a write end is gone, and exits by itself. ``proc.stop(process)``
    ends it early (its writers then get ``EPIPE``).
    """

    def __init__(self, process: subprocess.Popen[bytes], write_fds: dict[str, int],
                 directory: Path) -> None:
        self.process = process
        self.write_fds = write_fds
        self.directory = directory

    def fd(self, name: str) -> int:
        return self.write_fds[name]

    def close_write_ends(self) -> None:
        for fd in self.write_fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.write_fds = {}


def start(log_dir: Dir, names: Sequence[str], *, cap: int = CAP,
          rotate_at_start: bool = True, mode: int = FILE_MODE, group: int | None = None,
          timeout: float = START_TIMEOUT) -> LogPump:
    """Start one pump process writing the logs ``names`` (plain file names) in ``log_dir``,
    through ``proc.spawn`` (its own session).

    Returns once the pump has opened every log: it blocks for the pump's start, ~40 ms (from
    asyncio code call it through ``asyncio.to_thread``). Each log is capped at ``cap`` bytes
    (at least ``MIN_CAP``; default ``CAP``, 8 MiB), so ``<name>`` and ``<name>.1`` together
    hold at most ``2 * cap`` bytes; with ``rotate_at_start`` an existing ``<name>`` first
    becomes ``<name>.1``, else the pump appends to it. Every file gets ``mode`` (default
    0600) and, when given, the group ``group`` (0640 and the desktop user's group let them
    read their VMs' logs; the owner stays the pump's, root).

    One pump may carry several logs whose writers live as long as each other (a VM's QEMU
    console and stderr, say): it ends when all of their writers are gone. A child started
    later, or restarted on its own, gets a pump of its own.

    Raises ``ValueError`` for a bad name or cap, and ``LogPumpError`` when the pump cannot
    open a log (the message names the file and the reason) or does not report within
    ``timeout`` seconds.
    """
    if not names or len(set(names)) != len(names):
        raise ValueError(f"log names must be given, each once: {list(names)}")
    for name in names:
        _check_name(name)
        if name + ROTATED_SUFFIX in names:
            raise ValueError(f"log {name!r} would rotate onto log {name + ROTATED_SUFFIX!r}")
    if cap < MIN_CAP:
        raise ValueError(f"log cap {cap} is below the minimum of {MIN_CAP} bytes")
    # Imported when called, not with the module: the pump process imports this module too
    # (see the module docstring).
    import fcntl

    from vmsilo.host import proc

    child_fds: list[int] = []
    parent_fds: list[int] = []
    try:
        try:
            status_read, status_write = os.pipe2(os.O_CLOEXEC)
            parent_fds.append(status_read)
            child_fds.append(status_write)
            write_fds: dict[str, int] = {}
            sources = []
            for name in names:
                read_end, write_end = os.pipe2(os.O_CLOEXEC)
                child_fds.append(read_end)
                parent_fds.append(write_end)
                with contextlib.suppress(OSError):  # a smaller buffer works, waits more
                    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
                write_fds[name] = write_end
                sources.append(f"{read_end}:{name}")
            command = [sys.executable, "-m", "vmsilo.host.logpump",
                       "--dir-fd", str(log_dir.fd), "--dir-path", str(log_dir.path),
                       "--status-fd", str(status_write), "--cap", str(cap),
                       "--mode", f"{mode:o}", *(["--rotate"] if rotate_at_start else []),
                       *(["--group", str(group)] if group is not None else []),
                       *sources]
            process = proc.spawn(command, pass_fds=[log_dir.fd, *child_fds])
        finally:
            for fd in child_fds:
                os.close(fd)
        status = _await_status(status_read, timeout)
        if status != "ok":
            exited = process.poll() is not None
            proc.stop(process, grace=1.0)
            reason = status or (f"the log pump exited with status {process.returncode}"
                                if exited
                                else f"the log pump did not report within {timeout} s")
            raise LogPumpError(f"cannot write the logs {', '.join(names)} in {log_dir.path}: "
                               f"{reason}")
    except BaseException:
        for fd in parent_fds:
            os.close(fd)
        raise
    os.close(status_read)
    return LogPump(process, write_fds, log_dir.path)


def _await_status(fd: int, timeout: float) -> str:
    """What the pump wrote on its status pipe before closing it: "" when it exited without a
    word or after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    poller = select.poll()  # not select(): vmsilod may hold descriptors above FD_SETSIZE
    poller.register(fd, select.POLLIN)
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(left * 1000):
            return ""
        data = os.read(fd, 4096)
        if not data:
            return b"".join(chunks).decode(errors="replace").strip()
        chunks.append(data)


if __name__ == "__main__":
    sys.exit(main())
