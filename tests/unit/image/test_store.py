"""The image store: listing complete images, which VMs use them, garbage collection."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from vmsilo.errors import UserError
from vmsilo.host.paths import Mode, Paths
from vmsilo.image import store
from vmsilo.image.build import log_path


def make_image(paths: Paths, digest: str, size: int = 1000) -> Path:
    image = paths.image(digest)
    image.mkdir(parents=True)
    (image / "rootfs.erofs").write_bytes(b"\0" * size)
    (image / "manifest.json").write_text(
        json.dumps(
            {
                "digest": digest,
                "builtAt": "2024-01-01T00:00:00+00:00",
                "kernelVersion": "6.1.0-1-amd64",
            }
        )
    )
    log = log_path(paths, digest)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("log\n")
    return image


def config(**vms: object) -> SimpleNamespace:
    return SimpleNamespace(
        vms=vms, image=SimpleNamespace(suite="bookworm", mirror="http://deb.debian.org/debian")
    )


def vm(*packages: str) -> SimpleNamespace:
    return SimpleNamespace(guest_programs=list(packages), guest_config=[])


def test_vms_with_equal_inputs_share_one_image() -> None:
    specs = store.specs_for_config(config(a=vm("curl"), b=vm("curl"), c=vm()))
    users = store.users_by_digest(specs)
    assert sorted(users.values()) == [["a", "b"], ["c"]]


def test_unknown_vm_name_is_reported() -> None:
    with pytest.raises(UserError, match=r"no VM named nope in the config \(VMs: a\)"):
        store.specs_for_config(config(a=vm()), ["nope"])


def test_list_shows_only_complete_images(tmp_path: Path) -> None:
    paths = Paths.under(tmp_path, Mode.SYSTEM)
    make_image(paths, "d1")
    (paths.image_dir / "half").mkdir()  # no manifest: not an image
    (paths.image_dir / ".build-d2-xyz").mkdir()
    images = store.list_images(paths)
    assert [i.digest for i in images] == ["d1"]
    assert images[0].kernel_version == "6.1.0-1-amd64"
    assert images[0].size > 1000


def test_gc_removes_unused_images_logs_and_abandoned_builds_only(tmp_path: Path) -> None:
    paths = Paths.under(tmp_path, Mode.SYSTEM)
    keep = make_image(paths, "keep")
    drop = make_image(paths, "drop", size=5000)
    fresh_build = paths.image_dir / ".build-x-1"
    fresh_build.mkdir()
    old_build = paths.image_dir / ".build-y-2"
    old_build.mkdir()
    (old_build / "junk").write_bytes(b"j" * 10)
    old = time.time() - store.ABANDONED_BUILD_SECONDS - 60
    os.utime(old_build, (old, old))
    removed = store.collect_garbage(paths, {"keep"})
    assert {r.path for r in removed} == {drop, log_path(paths, "drop"), old_build}
    assert sum(r.size for r in removed) > 5000
    assert keep.exists() and log_path(paths, "keep").exists() and fresh_build.exists()
    assert not drop.exists() and not old_build.exists()
    assert store.collect_garbage(paths, {"keep"}) == []
