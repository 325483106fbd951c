"""Writer (and a strict reader, for tests and checks) of cpio "newc" archives.

The kernel unpacks an initramfs from this format: each entry is a 110-byte ASCII header
("070701" and thirteen 8-digit hex fields), the NUL-terminated name padded to a multiple of
four bytes (counted from the header's start), then the data padded the same way; a
``TRAILER!!!`` entry ends the archive. Entries are written in the order given, so the
caller puts directories before their contents; inode numbers are assigned in order and
every timestamp is fixed, which makes the archive reproducible.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

MAGIC = b"070701"
HEADER_SIZE = 110
TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One archive member. ``data`` is the file content, or the link target of a symlink."""

    name: str
    mode: int
    data: bytes = b""
    uid: int = 0
    gid: int = 0
    rdev_major: int = 0
    rdev_minor: int = 0
    mtime: int = 0

    @classmethod
    def directory(cls, name: str, mode: int = 0o755) -> Entry:
        return cls(name, stat.S_IFDIR | mode)

    @classmethod
    def file(cls, name: str, data: bytes, mode: int = 0o644) -> Entry:
        return cls(name, stat.S_IFREG | mode, data)

    @classmethod
    def symlink(cls, name: str, target: str) -> Entry:
        return cls(name, stat.S_IFLNK | 0o777, target.encode())

    @classmethod
    def char_device(cls, name: str, major: int, minor: int, mode: int = 0o600) -> Entry:
        return cls(name, stat.S_IFCHR | mode, rdev_major=major, rdev_minor=minor)


class CpioFormatError(ValueError):
    """The bytes are not a well-formed newc archive."""


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _header(entry: Entry, ino: int, name: bytes, nlink: int) -> bytes:
    fields = (
        ino,
        entry.mode,
        entry.uid,
        entry.gid,
        nlink,
        entry.mtime,
        len(entry.data),
        0,  # devmajor: the archive's own device, irrelevant for an initramfs
        0,
        entry.rdev_major,
        entry.rdev_minor,
        len(name) + 1,
        0,  # check: only used by the "070702" crc format
    )
    for value in fields:
        if not 0 <= value <= 0xFFFFFFFF:
            raise ValueError(f"cpio field out of range in {entry.name!r}: {value}")
    return MAGIC + b"".join(b"%08X" % value for value in fields)


def _member(entry: Entry, ino: int) -> bytes:
    name = entry.name.lstrip("/").encode()
    if not name or b"\0" in name:
        raise ValueError(f"bad cpio member name {entry.name!r}")
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    head = _header(entry, ino, name, nlink) + name + b"\0"
    return head + _pad(len(head)) + entry.data + _pad(len(entry.data))


def write(entries: Iterable[Entry]) -> bytes:
    """The archive of ``entries``, in order, followed by the trailer."""
    parts: list[bytes] = []
    seen: set[str] = set()
    ino = 0
    for ino, entry in enumerate(entries, start=1):
        key = entry.name.lstrip("/")
        if key in seen:
            raise ValueError(f"duplicate cpio member {entry.name!r}")
        seen.add(key)
        parts.append(_member(entry, ino))
    parts.append(_member(Entry(TRAILER, 0), ino + 1))
    return b"".join(parts)


def read(archive: bytes) -> Iterator[Entry]:
    """Parse a newc archive strictly: magic, hex fields, padding and trailer are checked."""
    offset = 0
    while True:
        header = archive[offset : offset + HEADER_SIZE]
        if len(header) < HEADER_SIZE:
            raise CpioFormatError(f"archive ends inside a header at offset {offset}")
        if header[:6] != MAGIC:
            raise CpioFormatError(f"bad magic {header[:6]!r} at offset {offset}")
        try:
            values = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        except ValueError as exc:
            raise CpioFormatError(f"non-hex header field at offset {offset}") from exc
        mode, uid, gid, mtime, size = values[1], values[2], values[3], values[5], values[6]
        name_size = values[11]
        name_end = offset + HEADER_SIZE + name_size
        raw_name = archive[offset + HEADER_SIZE : name_end]
        if name_size == 0 or len(raw_name) != name_size or raw_name[-1:] != b"\0":
            raise CpioFormatError(f"bad name at offset {offset}")
        data_start = name_end + (-(HEADER_SIZE + name_size) % 4)
        if archive[name_end:data_start].strip(b"\0"):
            raise CpioFormatError(f"non-zero name padding at offset {offset}")
        data = archive[data_start : data_start + size]
        if len(data) != size:
            raise CpioFormatError(f"archive ends inside the data of {raw_name[:-1]!r}")
        offset = data_start + size + (-size % 4)
        name = raw_name[:-1].decode()
        if name == TRAILER:
            return
        yield Entry(name, mode, data, uid, gid, values[9], values[10], mtime)
