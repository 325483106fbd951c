"""`vmsilo image build|list|gc` as a user calls them, against the cached real image; and our
initramfs read by the real cpio tool."""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
from pathlib import Path

import pytest

from vmsilo.cli import image_cmd
from vmsilo.host import proc
from vmsilo.image import cpio
from vmsilo.image.build import BuildResult

from .conftest import TEST_IMAGE_ROOT, needs_root

pytestmark = [needs_root, pytest.mark.timeout(600)]

# Without a display, both VMs boot the suite's default image (a display adds waypipe).
CONFIG = """\
user = "root"
[vms.alpha]
color = "red"
gpu = false
[vms.beta]
color = "blue"
gpu = false
"""


def vmsilo_image(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="vmsilo")
    image_cmd.register(parser.add_subparsers(dest="group", required=True))
    args = parser.parse_args(["image", *argv])
    result: int = args.func(args)
    return result


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "vmsilo.toml"
    path.write_text(CONFIG)
    monkeypatch.setenv("VMSILO_ROOT", str(TEST_IMAGE_ROOT))
    return path


def test_build_shares_one_image_and_never_rebuilds_it(
    built_image: BuildResult, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert vmsilo_image("build", "--config", str(config_file)) == 0
    out, err = capsys.readouterr()
    assert f"alpha, beta: image {built_image.digest} is up to date" in out
    assert f"logs/{built_image.digest}.log" in err

    assert vmsilo_image("list", "--config", str(config_file)) == 0
    out, _ = capsys.readouterr()
    line = next(line for line in out.splitlines() if built_image.digest in line)
    assert "alpha, beta" in line and "amd64" in line and "MiB" in line


def test_build_of_unknown_vm_is_a_user_error(config_file: Path) -> None:
    from vmsilo.errors import UserError

    with pytest.raises(UserError, match="no VM named gamma"):
        vmsilo_image("build", "gamma", "--config", str(config_file))


def test_gc_keeps_used_images_and_removes_others(
    built_image: BuildResult,
    config_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A private store holding the real image (hard links: no copy) and one stale image.
    root = tmp_path / "store"
    used = root / "images" / built_image.digest
    used.parent.mkdir(parents=True)
    shutil.copytree(built_image.path, used, copy_function=os.link)
    stale = root / "images" / ("0" * 32)
    stale.mkdir()
    (stale / "manifest.json").write_text('{"digest": "' + "0" * 32 + '"}')
    (stale / "rootfs.erofs").write_bytes(b"\0" * 4096)
    monkeypatch.setenv("VMSILO_ROOT", str(root))
    assert vmsilo_image("gc", "--config", str(config_file)) == 0
    out, _ = capsys.readouterr()
    assert f"removed {stale}" in out and "freed 4.0 KiB" in out
    assert used.exists() and not stale.exists()


def test_real_cpio_reads_our_initramfs(built_image: BuildResult, tmp_path: Path) -> None:
    archive = gzip.decompress((built_image.path / "initrd.img").read_bytes())
    (tmp_path / "initrd.cpio").write_bytes(archive)
    listing = proc.run(["sh", "-c", f"cpio -t < {tmp_path / 'initrd.cpio'}"])
    names = listing.stdout.split()
    assert names == [entry.name for entry in cpio.read(archive)]
    assert "init" in names and "bin/busybox" in names and "dev/console" in names
    assert any(name.endswith("/erofs.ko") for name in names)
    out = tmp_path / "out"
    out.mkdir()
    proc.run(
        ["sh", "-c", f"cpio -i --make-directories --quiet < {tmp_path / 'initrd.cpio'}"],
        cwd=out,
    )
    assert (out / "init").read_bytes().startswith(b"#!/bin/busybox sh")
    assert (out / "init").stat().st_mode & 0o111
    assert (out / "bin/busybox").stat().st_size > 500_000
    assert (out / "dev/console").is_char_device()
