"""A throwaway directory standing for an image root whose files are absolute symlinks to host
canaries (issue 15, 18): what the pack hook must read, empty and truncate inside the image,
never on the host. The canaries live outside /tmp (the root's own /tmp is one of the links).

Every link also has a target *inside* the root at the same absolute path, holding the
image's own content, so that a correct resolver succeeds (and reads the image's file) while
one that follows links on the host reads, empties or truncates the canary.
"""

from __future__ import annotations

import gzip
import shutil
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vmsilo.image.initramfs import REQUIRED_MODULES

KERNEL = "6.1.0-test-amd64"
HOST_SECRET = "HOST-CANARY-SECRET"
IMAGE_TEXT = "image's own"


def static_elf() -> bytes:
    """A 64-bit little-endian ELF header with no program headers: static to
    ``initramfs.is_static_elf`` (the initramfs is never booted in these tests)."""
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x20, 64)  # e_phoff
    struct.pack_into("<HH", header, 0x36, 56, 0)  # e_phentsize, e_phnum
    return bytes(header)


@dataclass(frozen=True)
class HostileImage:
    root: Path
    host: Path  # the canaries: host/secret (file), host/dir/keep (in a directory)

    def inside(self, host_path: Path) -> Path:
        return self.root / str(host_path).lstrip("/")

    def assert_host_untouched(self) -> None:
        assert (self.host / "secret").read_text() == HOST_SECRET + "\n"
        assert (self.host / "dir" / "keep").read_text() == HOST_SECRET + "\n"
        assert (self.host / "machine-id").read_text() == HOST_SECRET + "\n"
        assert sorted(p.name for p in (self.host / "dir").iterdir()) == ["keep"]


@contextmanager
def hostile_image(base: Path) -> Iterator[HostileImage]:
    host = Path(tempfile.mkdtemp(prefix="vmsilo-canary-", dir="/var/tmp"))
    try:
        yield _make(base / "root", host)
    finally:
        shutil.rmtree(host, ignore_errors=True)


def _make(root: Path, host: Path) -> HostileImage:
    (host / "secret").write_text(HOST_SECRET + "\n")
    (host / "dir").mkdir()
    (host / "dir" / "keep").write_text(HOST_SECRET + "\n")
    (host / "machine-id").write_text(HOST_SECRET + "\n")
    (host / "host-only.desktop").write_text(f"[Desktop Entry]\nName={HOST_SECRET}\n")
    image = HostileImage(root, host)

    # The image's own files at the canaries' absolute paths.
    inner = image.inside(host)
    inner.mkdir(parents=True)
    (inner / "secret").write_text(f"[Desktop Entry]\nName={IMAGE_TEXT}\n")
    (inner / "dir").mkdir()
    (inner / "dir" / "junk").write_text("image junk\n")
    (inner / "machine-id").write_text("image machine id\n")
    (inner / "vmlinuz").write_bytes(b"image kernel")

    # Merged /usr, as Debian's, and the usual directories.
    for d in ("usr/lib", "usr/bin", "usr/share/applications", "etc", "boot", "var/lib/dpkg",
              "var/cache/apt", "var/lib/apt", "dev", "proc", "sys", "run"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "lib").symlink_to("usr/lib")
    (root / "bin").symlink_to("usr/bin")
    (root / "usr/bin/busybox").write_bytes(static_elf())

    # Links the pack hook follows.
    apps = root / "usr/share/applications"
    (apps / "app.desktop").write_text("[Desktop Entry]\nName=app\nExec=app\n")
    (apps / "evil.desktop").symlink_to(host / "secret")  # absolute -> the image's file
    (apps / "gone.desktop").symlink_to(host / "host-only.desktop")  # host only
    (apps / "up.desktop").symlink_to("../../../../../../../.." + str(host / "secret"))
    (root / "var/lib/dpkg/status").write_text(
        "Package: app\nStatus: install ok installed\nVersion: 1.0\nArchitecture: amd64\n")
    (root / "boot" / f"vmlinuz-{KERNEL}").symlink_to(host / "vmlinuz")

    moddir = root / "usr/lib/modules" / KERNEL
    (moddir / "kernel").mkdir(parents=True)
    deps = []
    for name in REQUIRED_MODULES:
        rel = f"kernel/{name}.ko"
        deps.append(f"{rel}:")
        (moddir / rel).write_bytes(b"module " + name.encode())
    # A module that is an absolute link: the image's file at that path, not the host's.
    (host / "erofs.ko.gz").write_bytes(gzip.compress(HOST_SECRET.encode()))
    (image.inside(host) / "erofs.ko.gz").write_bytes(gzip.compress(b"image erofs module"))
    (moddir / "kernel/erofs.ko").unlink()
    (moddir / "kernel/erofs.ko.gz").symlink_to(host / "erofs.ko.gz")
    deps[REQUIRED_MODULES.index("erofs")] = "kernel/erofs.ko.gz:"
    (moddir / "modules.dep").write_text("\n".join(deps) + "\n")
    (moddir / "modules.alias").symlink_to(host / "secret")

    # What the hook empties or truncates.
    (root / "var/cache/apt/archives").symlink_to(host / "dir")
    (root / "var/lib/apt/lists").symlink_to(host / "dir")
    (root / "tmp").symlink_to(host / "dir")
    (root / "etc/machine-id").symlink_to(host / "machine-id")
    return image
