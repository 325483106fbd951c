"""Hypothesis against the filter's session: whatever a VM sends — random bytes, or valid
requests with one byte changed, split at any point, with descriptors or not — the session
answers with messages to pass on or with ``ViolationError``, and never leaks a descriptor."""

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmsilo.testing.wayland import prepared_session
from vmsilo.wayland.protocols import load_tables
from vmsilo.wayland.session import ViolationError

pytestmark = pytest.mark.skipif(not Path("/usr/share/wayland/wayland.xml").exists(),
                                reason="the Wayland protocol XML is not installed")

TABLES = load_tables() if Path("/usr/share/wayland/wayland.xml").exists() else {}
CORPUS = Path(__file__).parents[3] / "fuzz" / "corpus" / "wayland"


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _feed(chunks: list[bytes], fd_count: int) -> None:
    before = _open_fds()
    session = prepared_session("fuzz", TABLES)
    try:
        for index, chunk in enumerate(chunks):
            fds = ([os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC) for _ in range(fd_count)]
                   if index == 0 else [])
            session.from_client(chunk, fds).close_fds()
    except ViolationError:
        pass
    finally:
        session.close()
    assert _open_fds() == before


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512), st.integers(0, 3))
def test_any_bytes(data: bytes, fd_count: int) -> None:
    _feed([data], fd_count)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(CORPUS.iterdir()) if CORPUS.is_dir() else [Path("/dev/null")]),
       st.integers(0, 4096), st.integers(0, 255), st.integers(0, 4096))
def test_valid_streams_with_one_byte_changed_and_split(path: Path, where: int, value: int,
                                                       split: int) -> None:
    data = bytearray(path.read_bytes())
    fd_count, body = data[0] & 3, data[1:]
    if body:
        body[where % len(body)] = value
    cut = split % (len(body) + 1)
    _feed([bytes(body[:cut]), bytes(body[cut:])], fd_count)
