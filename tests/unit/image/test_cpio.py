"""cpio newc writer: round trip through our strict reader, and the format's layout rules."""

from __future__ import annotations

import stat

import pytest

from vmsilo.image import cpio


def sample() -> list[cpio.Entry]:
    return [
        cpio.Entry.directory("bin"),
        cpio.Entry.file("bin/busybox", b"\x7fELF" + bytes(range(256)) * 3, 0o755),
        cpio.Entry.symlink("bin/sh", "busybox"),
        cpio.Entry.char_device("dev/console", 5, 1),
        cpio.Entry.file("init", b"#!/bin/sh\n", 0o755),
        cpio.Entry.file("empty", b""),
        cpio.Entry.file("a" * 13, b"x" * 5),
    ]


def test_round_trip_preserves_every_field() -> None:
    entries = sample()
    assert list(cpio.read(cpio.write(entries))) == entries


@pytest.mark.parametrize("name_len", range(1, 9))
@pytest.mark.parametrize("data_len", [0, 1, 2, 3, 4, 5, 7])
def test_name_and_data_are_padded_to_four_bytes(name_len: int, data_len: int) -> None:
    archive = cpio.write([cpio.Entry.file("n" * name_len, b"d" * data_len)])
    name_field_end = cpio.HEADER_SIZE + name_len + 1
    data_start = name_field_end + (-name_field_end % 4)
    assert data_start % 4 == 0
    assert archive[cpio.HEADER_SIZE : name_field_end] == b"n" * name_len + b"\0"
    assert archive[name_field_end:data_start] == b"\0" * (data_start - name_field_end)
    assert archive[data_start : data_start + data_len] == b"d" * data_len
    trailer_start = data_start + data_len + (-data_len % 4)
    assert archive[trailer_start : trailer_start + 6] == b"070701"
    assert len(archive) % 4 == 0


def test_header_fields_are_hex_and_trailer_ends_archive() -> None:
    archive = cpio.write([cpio.Entry.file("f", b"hello", 0o600)])
    header = archive[: cpio.HEADER_SIZE]
    assert header[:6] == b"070701"
    fields = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
    assert fields[1] == stat.S_IFREG | 0o600
    assert fields[6] == 5  # filesize
    assert fields[11] == 2  # namesize includes the NUL
    assert archive.rstrip(b"\0").endswith(b"TRAILER!!!")


def test_symlink_data_is_its_target() -> None:
    (entry,) = cpio.read(cpio.write([cpio.Entry.symlink("sh", "busybox")]))
    assert stat.S_ISLNK(entry.mode)
    assert entry.data == b"busybox"


def test_leading_slash_is_stripped() -> None:
    (entry,) = cpio.read(cpio.write([cpio.Entry.file("/etc/x", b"")]))
    assert entry.name == "etc/x"


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        cpio.write([cpio.Entry.file("x", b""), cpio.Entry.file("/x", b"")])


def test_empty_archive_is_just_a_trailer() -> None:
    assert list(cpio.read(cpio.write([]))) == []


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda a: b"070702" + a[6:], "bad magic"),
        (lambda a: a[:50], "ends inside a header"),
        (lambda a: a[:6] + b"zzzzzzzz" + a[14:], "non-hex"),
        (lambda a: a[: cpio.HEADER_SIZE + 8], "bad name"),
        (lambda a: a[: cpio.HEADER_SIZE + 14], "ends inside the data"),
    ],
)
def test_reader_rejects_malformed_archives(mutate: object, message: str) -> None:
    archive = cpio.write([cpio.Entry.file("somefile", b"0123456789")])
    assert callable(mutate)
    with pytest.raises(cpio.CpioFormatError, match=message):
        list(cpio.read(mutate(archive)))


def test_reader_requires_a_trailer() -> None:
    archive = cpio.write([cpio.Entry.file("f", b"data")])
    without_trailer = archive[: archive.index(b"070701", 4)]
    with pytest.raises(cpio.CpioFormatError):
        list(cpio.read(without_trailer))
