"""Errors a user can meet while building, each for real: an unknown package, an unreachable
mirror, a full disk. Each must say what is wrong, name the log, and leave no image or build
directory behind."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from vmsilo.host import proc
from vmsilo.host.paths import Mode, Paths
from vmsilo.image.build import BuildError, apt_cache_dir, build_image, log_path
from vmsilo.image.spec import ImageSpec

from .conftest import TEST_IMAGE_ROOT, needs_root

pytestmark = [needs_root, pytest.mark.timeout(600)]


def assert_nothing_left(paths: Paths, digest: str) -> None:
    assert not paths.image(digest).exists()
    leftovers = [p.name for p in paths.image_dir.iterdir() if p.name.startswith(".build-")]
    assert leftovers == []


def shared_cache_paths(tmp_path: Path) -> Paths:
    """A fresh image dir whose apt cache is the shared warm one (so the test is fast)."""
    paths = Paths.under(tmp_path, Mode.SYSTEM)
    shared = apt_cache_dir(Paths.under(TEST_IMAGE_ROOT, Mode.SYSTEM))
    shared.mkdir(parents=True, exist_ok=True)
    apt_cache_dir(paths).symlink_to(shared)
    return paths


def test_unknown_package_is_named(tmp_path: Path) -> None:
    paths = shared_cache_paths(tmp_path)
    spec = ImageSpec(packages=("vmsilo-no-such-package",))
    with pytest.raises(BuildError) as caught:
        build_image(spec, paths)
    message = str(caught.value)
    assert "guestPrograms: no package named vmsilo-no-such-package in Debian bookworm" in message
    log = log_path(paths, spec.digest())
    assert f"full build log: {log}" in message
    assert "vmsilo-no-such-package" in log.read_text()
    assert_nothing_left(paths, spec.digest())


def test_unreachable_mirror_is_reported(tmp_path: Path) -> None:
    paths = Paths.under(tmp_path, Mode.SYSTEM)
    spec = ImageSpec(mirror="http://127.0.0.1:9/debian")
    with pytest.raises(BuildError) as caught:
        build_image(spec, paths)
    assert "cannot download from the mirror http://127.0.0.1:9/debian" in str(caught.value)
    assert "set image.mirror" in str(caught.value)
    assert log_path(paths, spec.digest()).exists()
    assert_nothing_left(paths, spec.digest())


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    proc.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)])
    try:
        yield mount
    finally:
        proc.run(["umount", "-l", str(mount)])


def test_full_disk_is_reported_and_cleaned_up(small_disk: Path) -> None:
    # No warm cache here: the downloads themselves fill the 48 MiB disk.
    paths = Paths.under(small_disk, Mode.SYSTEM)
    spec = ImageSpec()
    with pytest.raises(BuildError) as caught:
        build_image(spec, paths)
    assert "the disk is full (No space left on device)" in str(caught.value)
    assert_nothing_left(paths, spec.digest())
