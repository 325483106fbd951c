"""The pack hook's steps over an image root full of absolute symlinks to host canaries (issue
15, 18): desktop entries, the kernel version, the initramfs's module index, modules and
busybox, and the clean-up all work inside the image root; no host file is read, emptied or
truncated."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

from tests.support.hostile_image import HOST_SECRET, IMAGE_TEXT, KERNEL, hostile_image
from vmsilo.image import cpio, initramfs
from vmsilo.image.imageroot import ImageRoot
from vmsilo.image.pack import clean_root, desktop_entries, kernel_version


def test_desktop_entries_come_from_the_image_never_the_host(tmp_path: Path) -> None:
    with hostile_image(tmp_path) as bad, ImageRoot(bad.root) as image:
        entries = {e["file"]: e["text"] for e in desktop_entries(image)}
        bad.assert_host_untouched()
    # evil.desktop -> /var/tmp/…/secret: the image's file at that path; the host-only link
    # (gone.desktop) finds nothing; a climbing relative link stops at the image root.
    assert entries["evil.desktop"] == f"[Desktop Entry]\nName={IMAGE_TEXT}\n"
    assert entries["up.desktop"] == entries["evil.desktop"]
    assert "gone.desktop" not in entries
    assert "app.desktop" in entries
    assert all(HOST_SECRET not in text for text in entries.values())


def test_kernel_version_through_the_merged_usr_link(tmp_path: Path) -> None:
    with hostile_image(tmp_path) as bad, ImageRoot(bad.root) as image:
        assert kernel_version(image) == KERNEL


def test_clean_root_removes_links_and_never_their_host_targets(tmp_path: Path) -> None:
    with hostile_image(tmp_path) as bad:
        with ImageRoot(bad.root) as image:
            clean_root(image)
        bad.assert_host_untouched()
        for rel in ("var/cache/apt/archives", "var/lib/apt/lists", "tmp"):
            assert not os.path.lexists(bad.root / rel), rel
        machine_id = bad.root / "etc/machine-id"
        assert not machine_id.is_symlink() and machine_id.read_bytes() == b""
        # the image's files at the links' absolute paths are not touched either
        assert (bad.inside(bad.host) / "dir" / "junk").exists()
        assert (bad.inside(bad.host) / "machine-id").read_text() == "image machine id\n"


def test_clean_root_empties_real_junk_directories(tmp_path: Path) -> None:
    root = tmp_path / "root"
    archives = root / "var/cache/apt/archives"
    (archives / "partial").mkdir(parents=True)
    (archives / "lock").write_bytes(b"")
    (archives / "a.deb").write_bytes(b"deb")
    (root / "var/lib/apt/lists").mkdir(parents=True)
    (root / "var/lib/apt/lists/x_Packages").write_bytes(b"")
    (root / "var/cache/apt/pkgcache.bin").write_bytes(b"")
    (root / "tmp/sub").mkdir(parents=True)
    (root / "tmp/f").write_bytes(b"")
    (root / "etc").mkdir()
    (root / "etc/machine-id").write_text("0123\n")
    with ImageRoot(root) as image:
        clean_root(image)
    assert sorted(p.name for p in archives.iterdir()) == ["lock", "partial"]
    assert list((root / "var/lib/apt/lists").iterdir()) == []
    assert not (root / "var/cache/apt/pkgcache.bin").exists()
    assert list((root / "tmp").iterdir()) == []
    assert (root / "etc/machine-id").read_bytes() == b""


def _cpio_files(archive: bytes) -> dict[str, bytes]:
    return {e.name: e.data for e in cpio.read(gzip.decompress(archive))}


def test_initramfs_reads_modules_and_busybox_inside_the_image(tmp_path: Path) -> None:
    with hostile_image(tmp_path) as bad, ImageRoot(bad.root) as image:
        built = initramfs.build(image, KERNEL)
        bad.assert_host_untouched()
    files = _cpio_files(built.archive)
    assert files[f"lib/modules/{KERNEL}/kernel/erofs.ko"] == b"image erofs module"
    assert HOST_SECRET.encode() not in gzip.decompress(built.archive)
    assert "erofs" in built.modules


def test_initramfs_refuses_module_paths_outside_the_module_directory(tmp_path: Path) -> None:
    with hostile_image(tmp_path) as bad:
        dep = bad.root / "usr/lib/modules" / KERNEL / "modules.dep"
        text = dep.read_text().replace("kernel/erofs.ko.gz:", "../../../../etc/erofs.ko:")
        dep.write_text(text)
        with ImageRoot(bad.root) as image, pytest.raises(initramfs.InitramfsError,
                                                         match="not a path below"):
            initramfs.build(image, KERNEL)


def _outputs(outdir: Path) -> None:
    for name in ("rootfs.erofs", "vmlinuz", "initrd.img", "pack.json"):
        (outdir / name).write_bytes(b"x")
    (outdir / "icons").mkdir()
    (outdir / "icons" / "a.png").write_bytes(b"x")


def test_build_accepts_only_the_hooks_regular_files(tmp_path: Path) -> None:
    from vmsilo.image.build import BuildError, check_outputs

    _outputs(tmp_path)
    check_outputs(tmp_path)
    (tmp_path / "vmlinuz").unlink()
    (tmp_path / "vmlinuz").symlink_to("/etc/shadow")
    with pytest.raises(BuildError, match="vmlinuz, not a regular file"):
        check_outputs(tmp_path)
    (tmp_path / "vmlinuz").unlink()
    with pytest.raises(BuildError, match="did not write vmlinuz"):
        check_outputs(tmp_path)
    (tmp_path / "vmlinuz").write_bytes(b"x")
    (tmp_path / "icons" / "b.png").symlink_to("/etc/shadow")
    with pytest.raises(BuildError, match=r"icons/b\.png"):
        check_outputs(tmp_path)
    (tmp_path / "icons" / "b.png").unlink()
    (tmp_path / "extra").write_bytes(b"")
    with pytest.raises(BuildError, match="an unexpected entry"):
        check_outputs(tmp_path)


def test_subordinate_ids_are_counted_per_user() -> None:
    from vmsilo.image.build import subid_count

    text = "alice:100000:65536\n1001:165536:1000\nbob:x:y\n\nbob:200000:65536\n"
    assert subid_count("alice", 1000, text) == 65536
    assert subid_count("carol", 1001, text) == 1000  # by uid
    assert subid_count("bob", 1002, text) == 65536  # the malformed line is skipped
    assert subid_count("dave", 1003, text) == 0


def test_a_build_without_root_and_without_subids_names_the_fix(tmp_path: Path) -> None:
    from vmsilo.errors import UserError
    from vmsilo.image.build import check_subids

    subuid, subgid = tmp_path / "subuid", tmp_path / "subgid"
    subuid.write_text("alice:100000:65536\n")
    subgid.write_text("alice:100000:1000\n")
    check_subids("alice", 1000, (subuid,))
    with pytest.raises(UserError, match=r"subgid \(none or too few there\); as root: usermod "
                       r"--add-subuids 100000-165535 --add-subgids 100000-165535 alice"):
        check_subids("alice", 1000, (subuid, subgid))
    with pytest.raises(UserError, match=r"missing and .*subgid"):
        check_subids("alice", 1000, (tmp_path / "missing", subgid))
