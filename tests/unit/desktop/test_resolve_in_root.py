"""Paths of an image resolve inside its root as the guest would see them (issue 15, item 4):
checked against the kernel's own answer, openat2(2) with RESOLVE_IN_ROOT, on random trees of
files, directories and links (absolute, relative, climbing, looping, pointing at the host)."""

from __future__ import annotations

import ctypes
import errno
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmsilo.desktop.icons import resolve_in_root

SYS_OPENAT2 = 437  # x86_64, aarch64 and most others (the unified syscall table)
RESOLVE_IN_ROOT = 0x10


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)


def kernel_resolve(root: Path, path: str) -> Path | None:
    """What the kernel makes of ``path`` with ``root`` as ``/``; None when it fails."""
    dirfd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        how = _OpenHow(os.O_PATH, 0, RESOLVE_IN_ROOT)
        fd = _libc.syscall(SYS_OPENAT2, dirfd, path.encode(), ctypes.byref(how),
                           ctypes.sizeof(how))
        if fd < 0:
            if ctypes.get_errno() == errno.ENOSYS:
                pytest.skip("openat2 is not available")
            return None
        try:
            return Path(os.readlink(f"/proc/self/fd/{fd}"))
        finally:
            os.close(fd)
    finally:
        os.close(dirfd)


_NAMES = st.sampled_from(["a", "b", "usr", "x.png"])
_REL = st.lists(st.sampled_from(["a", "b", "usr", "x.png", "..", ".", ""]), min_size=1,
                max_size=5).map("/".join)
_TARGET = st.one_of(_REL, _REL.map(lambda p: "/" + p), st.just("{outside}"),
                    st.just("{outside}/x.png"))
_TREE = st.lists(st.tuples(st.lists(_NAMES, min_size=1, max_size=3),
                           st.one_of(st.just("dir"), st.just("file"), _TARGET)), max_size=10)


def _build(root: Path, outside: Path, tree: list[tuple[list[str], str]]) -> None:
    for parts, kind in tree:
        path = root.joinpath(*parts)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if kind == "dir":
                path.mkdir()
            elif kind == "file":
                path.write_bytes(b"")
            else:
                path.symlink_to(kind.format(outside=outside))
        except OSError:
            continue  # a parent is a file or a link, or the name is taken: skip it


@settings(max_examples=150, deadline=None)
@given(_TREE, st.lists(_REL.map(lambda p: "/" + p), min_size=1, max_size=5))
def test_resolution_is_the_kernels_in_root(tree: list[tuple[list[str], str]],
                                           queries: list[str]) -> None:
    with tempfile.TemporaryDirectory() as base:
        root, outside = Path(base) / "root", Path(base) / "outside"
        root.mkdir()
        (outside / "usr").mkdir(parents=True)
        (outside / "x.png").write_bytes(b"host")
        _build(root, outside, tree)
        for query in queries:
            ours = resolve_in_root(root, query)
            assert ours == kernel_resolve(root, query.lstrip("/") or "."), query
            if ours is not None:
                assert ours.is_relative_to(root)
                below = ours.relative_to(root).parts
                assert not any(root.joinpath(*below[:i]).is_symlink()
                               for i in range(1, len(below) + 1))
