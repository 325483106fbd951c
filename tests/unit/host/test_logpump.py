"""The log pump's file handling, in this process (no pump spawned): the cap and rotation,
rotation at start and appending, things planted at the log's names, errors that drop data
instead of stopping, and the pump loop run by ``main`` on real pipes. The pump as its own
process is tested in tests/integration/host/test_logpump.py."""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmsilo.host import logpump
from vmsilo.host.logpump import MIN_CAP, CappedLog
from vmsilo.host.safefs import Dir

CAP = MIN_CAP


@pytest.fixture
def logs(tmp_path: Path) -> Iterator[Dir]:
    with Dir.secure(tmp_path / "logs") as directory:
        yield directory


def content(directory: Dir, name: str) -> bytes:
    return (directory.path / name).read_bytes()


def stream(length: int, start: int = 0) -> bytes:
    """Bytes that say where they are, so that a misplaced cut shows."""
    return bytes((start + i) % 251 for i in range(length))


def test_fresh_log_is_created_private(logs: Dir) -> None:
    log = CappedLog(logs.fd, "console.log", cap=CAP)
    log.write(b"hello\n")
    log.close()
    assert content(logs, "console.log") == b"hello\n"
    st_ = logs.lstat("console.log")
    assert stat.S_IMODE(st_.st_mode) == 0o600 and st_.st_uid == os.geteuid()
    assert not logs.exists("console.log.1")


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file another group needs root")
@pytest.mark.parametrize("rotate", [True, False])
def test_every_file_gets_the_mode_and_group_asked_for(logs: Dir, rotate: bool) -> None:
    (logs.path / "console.log").write_bytes(b"old\n")
    group = 65534  # nogroup: any group but ours
    old_umask = os.umask(0o077)  # vmsilod's umask must not narrow the mode
    try:
        log = CappedLog(logs.fd, "console.log", cap=CAP, rotate_at_start=rotate, mode=0o640,
                        group=group)
        log.write(stream(2 * CAP))
        log.close()
    finally:
        os.umask(old_umask)
    for name in ("console.log", "console.log.1"):
        info = logs.lstat(name)
        assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o640, 0, group)


def test_rotation_happens_only_past_the_cap(logs: Dir) -> None:
    log = CappedLog(logs.fd, "vmm.log", cap=CAP)
    log.write(stream(CAP))  # exactly the cap: still one file
    assert not logs.exists("vmm.log.1")
    log.write(stream(1, CAP))
    log.close()
    assert content(logs, "vmm.log.1") == stream(CAP)
    assert content(logs, "vmm.log") == stream(1, CAP)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=3 * CAP), min_size=1, max_size=12))
def test_the_newest_bytes_are_kept_and_never_more_than_twice_the_cap(
        tmp_path_factory: pytest.TempPathFactory, sizes: list[int]) -> None:
    with Dir.secure(tmp_path_factory.mktemp("logs")) as directory:
        log = CappedLog(directory.fd, "x.log", cap=CAP)
        written = b""
        for size in sizes:
            data = stream(size, len(written))
            log.write(data)
            written += data
            current = content(directory, "x.log")
            rotated = content(directory, "x.log.1") if directory.exists("x.log.1") else b""
            assert len(current) <= CAP and len(rotated) <= CAP
            assert len(current) == (len(written) - 1) % CAP + 1 if written else not current
            assert len(rotated) == (CAP if len(written) > CAP else 0)
            assert written.endswith(rotated + current)
        log.close()


def test_rotate_at_start_keeps_the_previous_start(logs: Dir) -> None:
    (logs.path / "console.log").write_bytes(b"last start\n")
    (logs.path / "console.log.1").write_bytes(b"the start before\n")
    log = CappedLog(logs.fd, "console.log", cap=CAP, rotate_at_start=True)
    log.write(b"this start\n")
    log.close()
    assert content(logs, "console.log.1") == b"last start\n"
    assert content(logs, "console.log") == b"this start\n"


def test_append_continues_and_counts_what_is_there(logs: Dir) -> None:
    (logs.path / "helper.log").write_bytes(stream(CAP - 10))
    log = CappedLog(logs.fd, "helper.log", cap=CAP, rotate_at_start=False)
    log.write(stream(20, CAP - 10))
    log.close()
    assert content(logs, "helper.log.1") == stream(CAP)
    assert content(logs, "helper.log") == stream(10, CAP)


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    target = tmp_path / "canary"
    target.write_bytes(b"precious\n")
    target.chmod(0o644)
    return target


def assert_untouched(canary: Path) -> None:
    assert canary.read_bytes() == b"precious\n"
    assert stat.S_IMODE(canary.stat().st_mode) == 0o644


@pytest.mark.parametrize("rotate", [True, False])
def test_links_at_both_names_are_never_followed(logs: Dir, canary: Path, rotate: bool) -> None:
    os.symlink(canary, logs.path / "console.log")
    os.symlink(canary, logs.path / "console.log.1")
    log = CappedLog(logs.fd, "console.log", cap=CAP, rotate_at_start=rotate)
    log.write(stream(3 * CAP + 1))
    log.close()
    assert_untouched(canary)
    for name in ("console.log", "console.log.1"):
        assert stat.S_ISREG(logs.lstat(name).st_mode)


def test_a_dangling_link_is_not_created_through(logs: Dir, tmp_path: Path) -> None:
    os.symlink(tmp_path / "made-by-root", logs.path / "console.log")
    CappedLog(logs.fd, "console.log", cap=CAP, rotate_at_start=False).close()
    assert not (tmp_path / "made-by-root").exists()
    assert stat.S_ISREG(logs.lstat("console.log").st_mode)


@pytest.mark.parametrize("rotate", [True, False])
def test_a_hard_link_is_never_written_through(logs: Dir, canary: Path, rotate: bool) -> None:
    os.link(canary, logs.path / "console.log")
    log = CappedLog(logs.fd, "console.log", cap=CAP, rotate_at_start=rotate)
    log.write(stream(3 * CAP))
    log.close()
    assert_untouched(canary)
    assert canary.stat().st_nlink == 1  # the rotations removed the planted name


def test_a_fifo_at_the_name_is_replaced_not_opened(logs: Dir) -> None:
    os.mkfifo(logs.path / "console.log")  # opening it for writing would block forever
    log = CappedLog(logs.fd, "console.log", cap=CAP, rotate_at_start=False)
    log.write(b"x")
    log.close()
    assert content(logs, "console.log") == b"x"


def test_a_directory_at_the_name_is_an_error_saying_what_to_do(logs: Dir) -> None:
    (logs.path / "console.log").mkdir()
    with pytest.raises(IsADirectoryError, match="is a directory, not a log; remove it"):
        CappedLog(logs.fd, "console.log", cap=CAP, where=str(logs.path))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="below the minimum"):
        CappedLog(0, "x.log", cap=MIN_CAP - 1)
    with pytest.raises(ValueError, match="not a plain file name"):
        CappedLog(0, "../x.log")


def test_errors_drop_data_and_are_noted_when_writing_works_again(
        logs: Dir, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(logpump.time, "monotonic", lambda: clock[0])
    log = CappedLog(logs.fd, "console.log", cap=CAP)
    log.write(b"before\n")
    # The log's directory disappears: the current file lives on until the next rotation,
    # which cannot create a new one.
    logs.unlink("console.log")
    os.rmdir(logs.path)
    log.write(stream(CAP))  # fills the open, unlinked file, then fails to rotate
    assert log.dropped == 7 and "No such file" in log.last_error
    log.write(b"lost\n")  # within RETRY_INTERVAL: not even tried
    assert log.dropped == 12
    os.mkdir(logs.path)
    clock[0] += logpump.RETRY_INTERVAL
    log.write(b"still lost\n")  # tried, but the descriptor's directory is gone for good
    assert log.dropped == 23
    log.close()


def test_the_dropped_count_is_written_first_once_writing_works(
        logs: Dir, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(logpump.time, "monotonic", lambda: clock[0])
    log = CappedLog(logs.fd, "console.log", cap=CAP)
    failing = [True]
    real_write = os.write

    def disk(fd: int, data: memoryview | bytes) -> int:
        if failing[0]:
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(logpump.os, "write", disk)
    log.write(b"0123456789")
    log.write(b"abc")
    failing[0] = False
    log.write(b"too soon\n")
    clock[0] += logpump.RETRY_INTERVAL
    log.write(b"after\n")
    log.close()
    assert content(logs, "console.log") == (
        b"\n[vmsilo log pump: 22 bytes dropped: No space left on device]\nafter\n")


def test_main_pumps_pipes_into_logs_until_every_writer_is_gone(logs: Dir) -> None:
    status_read, status_write = os.pipe()
    big_read, big_write = os.pipe()
    small_read, small_write = os.pipe()
    data = stream(10 * CAP + 123)

    def writer() -> None:
        with os.fdopen(big_write, "wb") as out:
            out.write(data)
        with os.fdopen(small_write, "wb") as out:
            out.write(b"bye\n")

    thread = threading.Thread(target=writer)
    thread.start()
    code = logpump.main(["--dir-fd", str(logs.fd), "--status-fd", str(status_write),
                         "--cap", str(CAP), "--rotate", f"{big_read}:big.log",
                         f"{small_read}:small.log"])
    thread.join()
    assert code == 0
    assert os.read(status_read, 100) == b"ok"
    assert content(logs, "big.log.1") + content(logs, "big.log") == data[-(CAP + 123):]
    assert content(logs, "small.log") == b"bye\n"
    for fd in (big_read, small_read, status_write):
        with pytest.raises(OSError):
            os.fstat(fd)  # the pump closed them as they ended
    os.close(status_read)


def test_an_internal_error_is_noted_and_the_writers_never_block(
        logs: Dir, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = CappedLog.write

    def buggy(self: CappedLog, data: bytes) -> None:
        if b"boom" in data:
            raise RuntimeError("bug")
        real_write(self, data)

    monkeypatch.setattr(CappedLog, "write", buggy)
    status_read, status_write = os.pipe()
    sources = {name: os.pipe() for name in ("a.log", "b.log")}

    def writer() -> None:
        with os.fdopen(sources["b.log"][1], "wb") as out:
            out.write(b"b is done\n")
        # b's data is logged before the bug strikes (main may not even have made b.log yet)
        while not logs.exists("b.log") or content(logs, "b.log") != b"b is done\n":
            time.sleep(0.01)
        with os.fdopen(sources["a.log"][1], "wb") as out:
            out.write(b"boom")
            out.write(b"x" * 1_000_000)  # far more than a pipe holds: must be drained

    thread = threading.Thread(target=writer)
    thread.start()
    code = logpump.main(["--dir-fd", str(logs.fd), "--status-fd", str(status_write),
                         *(f"{read}:{name}" for name, (read, _) in sources.items())])
    thread.join(10)
    assert not thread.is_alive()
    assert code == 1
    assert content(logs, "b.log") == b"b is done\n"  # ended before the bug: left alone
    assert content(logs, "a.log") == (
        b"\n[vmsilo log pump: stopped by an internal error: RuntimeError('bug')]\n")
    os.close(status_read)


def test_main_reports_a_log_it_cannot_open(logs: Dir) -> None:
    (logs.path / "x.log").mkdir()
    status_read, status_write = os.pipe()
    source_read, source_write = os.pipe()
    code = logpump.main(["--dir-fd", str(logs.fd), "--dir-path", str(logs.path),
                         "--status-fd", str(status_write), f"{source_read}:x.log"])
    assert code == 1
    assert os.read(status_read, 1000).decode() == (
        f"{logs.path}/x.log is a directory, not a log; remove it")
    for fd in (status_read, source_read, source_write):
        os.close(fd)


@pytest.mark.parametrize("argv", [
    [], ["--dir-fd", "3"], ["3:x.log"], ["--dir-fd"], ["--dir-fd", "3", "x.log"],
    ["--dir-fd", "3", "--bogus", "4:x.log"], ["--dir-fd", "three", "4:x.log"],
])
def test_main_refuses_a_bad_command_line(argv: list[str],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert logpump.main(argv) == 2
    assert "usage: python -m vmsilo.host.logpump" in capsys.readouterr().err


@pytest.mark.parametrize(("names", "cap", "message"), [
    ([], logpump.CAP, "each once"),
    (["a.log", "a.log"], logpump.CAP, "each once"),
    (["a.log", "a.log.1"], logpump.CAP, "would rotate onto"),
    (["../a.log"], logpump.CAP, "not a plain file name"),
    (["a.log"], 100, "below the minimum"),
])
def test_start_refuses_bad_names_before_spawning(logs: Dir, names: list[str], cap: int,
                                                 message: str) -> None:
    with pytest.raises(ValueError, match=message):
        logpump.start(logs, names, cap=cap)
