"""Our initramfs: busybox-static, the init script and the kernel modules the root needs.

Built from an unpacked guest root (its ``/bin/busybox`` from busybox-static and its
``/lib/modules/<version>``), so the initramfs always matches the image's kernel. The result
is a gzip-compressed cpio newc archive with fixed timestamps: the same root gives the same
bytes. What the init script does at boot is described in ``init.sh``.
"""

from __future__ import annotations

import gzip
import lzma
import shlex
import struct
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath

from vmsilo.image import cpio
from vmsilo.image.imageroot import ImageRoot
from vmsilo.image.modules import ModuleError, ModuleIndex, module_name

# What the init script needs, in load order; dependencies come from modules.dep. Devices
# may be virtio-pci or virtio-mmio (-M microvm).
REQUIRED_MODULES = (
    "virtio_pci",
    "virtio_mmio",
    "virtio_blk",
    "virtio_console",
    "erofs",
    "overlay",
    "ext4",
)


class InitramfsError(Exception):
    """The guest root lacks something the initramfs needs."""


def init_script(module_paths: list[str]) -> str:
    """The ``/init`` script, with the module list (paths below /lib/modules/<version>, a
    leading ``?`` marks a module whose failure to load is not fatal)."""
    template = resources.files("vmsilo.image").joinpath("init.sh").read_text()
    for path in module_paths:
        if shlex.quote(path.removeprefix("?")) != path.removeprefix("?"):
            raise InitramfsError(f"module path {path!r} contains characters the script cannot use")
    return template.replace("@MODULES@", " ".join(module_paths))


def is_static_elf(data: bytes) -> bool:
    """True for a 64-bit little-endian ELF without a PT_INTERP (dynamic loader) header."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return False
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for index in range(phnum):
        (p_type,) = struct.unpack_from("<I", data, phoff + index * phentsize)
        if p_type == 3:  # PT_INTERP
            return False
    return True


# Far above any module or index file; a bigger one is not a kernel's.
FILE_MAX_BYTES = 64 * 1024 * 1024


def _decompressed(image: ImageRoot, path: str) -> bytes:
    if path.endswith(".zst"):
        raise InitramfsError(f"{path}: zstd-compressed modules are not supported")
    data = image.read_bytes(path, FILE_MAX_BYTES)
    if path.endswith(".xz"):
        return lzma.decompress(data)
    if path.endswith(".gz"):
        return gzip.decompress(data)
    return data


def _with_parents(path: PurePosixPath, dirs: set[str], entries: list[cpio.Entry]) -> None:
    for parent in reversed(path.parents):
        name = str(parent)
        if name not in (".", "/") and name not in dirs:
            dirs.add(name)
            entries.append(cpio.Entry.directory(name))


@dataclass(frozen=True)
class Initramfs:
    archive: bytes
    modules: list[str]


def build(image: ImageRoot | Path, kernel_version: str) -> Initramfs:
    """The initramfs for the kernel ``kernel_version`` of the guest root ``image``. Every file
    (the module index, the modules it names, busybox) is read through ``ImageRoot``: resolved
    inside the image root, never following a link into the host."""
    if isinstance(image, Path):
        with ImageRoot(image) as opened:
            return build(opened, kernel_version)
    moddir = f"lib/modules/{kernel_version}"

    def optional_file(name: str) -> str:
        path = f"{moddir}/{name}"
        return image.read_text(path, FILE_MAX_BYTES) if image.is_file(path) else ""

    try:
        index = ModuleIndex.parse(
            image.read_text(f"{moddir}/modules.dep", FILE_MAX_BYTES),
            optional_file("modules.builtin"),
            optional_file("modules.softdep"),
            optional_file("modules.alias"),
        )
    except OSError as exc:
        raise InitramfsError(
            f"cannot read the module index of kernel {kernel_version}: {exc}"
        ) from exc
    try:
        module_paths = index.load_order(REQUIRED_MODULES)
    except ModuleError as exc:
        raise InitramfsError(f"kernel {kernel_version}: {exc}") from exc

    busybox = (image.read_bytes("bin/busybox", FILE_MAX_BYTES)
               if image.is_file("bin/busybox") else b"")
    if not is_static_elf(busybox):
        raise InitramfsError(
            "the guest root has no statically linked /bin/busybox (package busybox-static)"
        )

    entries: list[cpio.Entry] = []
    dirs: set[str] = set()
    for name in ("bin", "dev", "etc", "lib", "proc", "run", "sbin", "sys", "newroot"):
        dirs.add(name)
        entries.append(cpio.Entry.directory(name))
    # The kernel opens /dev/console for init's stdio before init can mount devtmpfs.
    entries.append(cpio.Entry.char_device("dev/console", 5, 1))
    entries.append(cpio.Entry.file("bin/busybox", busybox, 0o755))
    stored: list[str] = []
    for entry in module_paths:
        optional = entry.startswith("?")
        rel = entry.removeprefix("?")
        if rel.startswith("/") or ".." in rel.split("/"):
            # depmod writes paths below the module directory; this one would name a file
            # elsewhere in the image (or, unresolved, on the host) and a cpio name with "..".
            raise InitramfsError(f"kernel {kernel_version}: modules.dep names {rel!r}, not a "
                                 f"path below /lib/modules/{kernel_version}; rebuild the image "
                                 "with the distribution's depmod")
        stored_rel = rel
        for suffix in (".xz", ".gz", ".zst"):
            stored_rel = stored_rel.removesuffix(suffix)
        target = PurePosixPath("lib/modules", kernel_version, stored_rel)
        _with_parents(target, dirs, entries)
        try:
            data = _decompressed(image, f"{moddir}/{rel}")
        except OSError as exc:
            raise InitramfsError(f"kernel {kernel_version}: module {rel}: {exc}") from exc
        entries.append(cpio.Entry.file(str(target), data, 0o644))
        stored.append(("?" if optional else "") + stored_rel)
    entries.append(cpio.Entry.file("init", init_script(stored).encode(), 0o755))
    archive = gzip.compress(cpio.write(entries), compresslevel=6, mtime=0)
    return Initramfs(archive, [module_name(p.removeprefix("?")) for p in stored])
