"""Paths from the config opened for the VMM: root opens only what root alone controls; the
rest is opened as the desktop user, so a link the user plants can never make root hand a VM
a file the user could not open. Real files and a real unprivileged child, as root."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmsilo.errors import UserError
from vmsilo.host.openas import open_for_vmm, open_if_root_controlled

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root and another user")

NOBODY = (65534, 65534)


@pytest.fixture
def tree() -> Iterator[Path]:
    """A directory the desktop user can reach (pytest's own temp root is root's 0700)."""
    path = Path(tempfile.mkdtemp(prefix="vmsilo-openas-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _users(path: Path) -> Path:
    path.mkdir()
    os.chown(path, *NOBODY)
    path.chmod(0o755)
    return path


def _read(fd: int) -> bytes:
    try:
        return os.pread(fd, 100, 0)
    finally:
        os.close(fd)


def test_root_opens_what_root_alone_controls_following_root_links(tree: Path) -> None:
    (tree / "images").mkdir()
    (tree / "images" / "vmlinuz-6.1").write_bytes(b"kernel")
    (tree / "images" / "vmlinuz").symlink_to("vmlinuz-6.1")
    (tree / "current").symlink_to(tree / "images")
    fd = open_if_root_controlled(tree / "current" / "vmlinuz", os.O_RDONLY)
    assert fd is not None and _read(fd) == b"kernel"


def test_anything_of_someone_else_on_the_way_is_not_opened_by_root(tree: Path) -> None:
    home = _users(tree / "home")
    (home / "disk.img").write_bytes(b"users")
    assert open_if_root_controlled(home / "disk.img", os.O_RDONLY) is None
    (tree / "link").symlink_to(home / "disk.img")
    assert open_if_root_controlled(tree / "link", os.O_RDONLY) is None
    os.lchown(tree / "link", *NOBODY)
    assert open_if_root_controlled(tree / "link", os.O_RDONLY) is None
    sticky = tree / "tmp"
    sticky.mkdir(mode=0o1777)
    sticky.chmod(0o1777)
    (sticky / "theirs").symlink_to(tree / "link")
    os.lchown(sticky / "theirs", *NOBODY)
    assert open_if_root_controlled(sticky / "theirs", os.O_RDONLY) is None


def test_the_users_own_disk_is_opened_as_the_user(tree: Path) -> None:
    home = _users(tree / "home")
    disk = home / "disk.img"
    disk.write_bytes(b"users")
    os.chown(disk, *NOBODY)
    disk.chmod(0o600)
    fd = open_for_vmm(disk, os.O_RDWR, NOBODY, "vms.x.additionalDisks")
    assert _read(fd) == b"users"


def test_a_link_the_user_planted_to_roots_file_is_refused(tree: Path) -> None:
    secret = tree / "secret"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    home = _users(tree / "home")
    (home / "disk.img").symlink_to(secret)
    os.lchown(home / "disk.img", *NOBODY)
    for flags in (os.O_RDONLY, os.O_RDWR):
        with pytest.raises(UserError) as caught:
            open_for_vmm(home / "disk.img", flags, NOBODY, "vms.x.additionalDisks")
        assert "vms.x.additionalDisks: cannot open" in str(caught.value)
        assert "desktop user (uid 65534) cannot open it" in str(caught.value)
    assert secret.read_text() == "root only\n"


def test_read_only_access_does_not_prove_write_access(tree: Path) -> None:
    readable = tree / "shared.img"
    readable.write_bytes(b"x")
    readable.chmod(0o644)
    home = _users(tree / "home")
    (home / "disk.img").symlink_to(readable)
    assert _read(open_for_vmm(home / "disk.img", os.O_RDONLY, NOBODY, "disk")) == b"x"
    with pytest.raises(UserError, match="cannot open"):
        open_for_vmm(home / "disk.img", os.O_RDWR, NOBODY, "disk")


def test_a_missing_file_is_not_created(tree: Path) -> None:
    home = _users(tree / "home")
    with pytest.raises(UserError, match="No such file"):
        open_for_vmm(home / "absent.img", os.O_RDWR, NOBODY, "disk")
    assert not (home / "absent.img").exists()
