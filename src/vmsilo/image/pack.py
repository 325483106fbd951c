"""The last build step, run by mmdebstrap as a customize hook on the finished root.

It runs inside mmdebstrap's namespace (so in unshare mode it sees the root with the right
owners), removes what a VM image does not need (apt caches and lists, /tmp), packs the root
with ``mkfs.erofs``, copies the kernel out of ``/boot``, writes our initramfs, and records
what the manifest needs (kernel version, packages, desktop entries) in ``pack.json``. The
build module assembles the manifest from it. Invoked as
``python -m vmsilo.image.pack ROOT OUTDIR COMPRESSION``.

It runs as host root (root mode) over a tree the image's packages and scripts wrote: every
path taken from the image (desktop entries, the dpkg status, ``/lib/modules``, the kernel,
busybox, the junk it empties, ``/etc/machine-id`` it truncates) goes through
``imageroot.ImageRoot``, which resolves it inside the image root and never follows a link
into the host (nor onto the host's ``/proc``, ``/sys`` or ``/dev`` mounted in the root).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from vmsilo.desktop import icons
from vmsilo.host import proc
from vmsilo.image import initramfs
from vmsilo.image.imageroot import ImageRoot

DESKTOP_ENTRY_MAX_BYTES = 64 * 1024
DESKTOP_ENTRIES_MAX = 1000
DPKG_STATUS_MAX_BYTES = 64 * 1024 * 1024
KERNEL_MAX_BYTES = 256 * 1024 * 1024

# Removed before packing; mmdebstrap's own cleanup would come too late (after hooks).
_JUNK = (
    "var/cache/apt/archives",
    "var/cache/apt/pkgcache.bin",
    "var/cache/apt/srcpkgcache.bin",
    "var/lib/apt/lists",
    "var/cache/debconf/templates.dat-old",
    "var/lib/dpkg/status-old",
    "var/log/apt",
    "var/lib/vmsilo-build",
)


def stage(name: str) -> None:
    print(f"vmsilo-stage: {name}", flush=True)


def _apt_keeps(name: str, is_dir: bool) -> bool:
    """apt's own ``partial/`` directories and ``lock`` files stay in the emptied caches."""
    return name == ("partial" if is_dir else "lock")


def clean_root(image: ImageRoot) -> None:
    """Empty the junk directories (or remove junk files) and ``/tmp``, and empty
    ``/etc/machine-id``. A symlink where a directory or file was expected is removed itself:
    its target, in the image or on the host, is never emptied or truncated."""
    for rel in _JUNK:
        image.clean_dir(rel, keep=_apt_keeps)
    image.clean_dir("tmp")
    # Empty (not "uninitialized"): systemd makes a transient id per boot and every VM
    # started from this image gets its own.
    image.write_empty("etc/machine-id")


def kernel_version(image: ImageRoot) -> str:
    versions = [name for name in image.listdir("lib/modules")
                if image.is_dir(f"lib/modules/{name}")]
    if len(versions) != 1:
        raise SystemExit(f"vmsilo-pack: expected one kernel in /lib/modules, found {versions}")
    return versions[0]


def installed_packages(status_text: str) -> dict[str, str]:
    """Package -> version of every installed package, from a dpkg ``status`` file."""
    result: dict[str, str] = {}
    for stanza in status_text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line[:1] in (" ", "\t") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            name = fields["Package"]
            arch = fields.get("Architecture", "")
            if fields.get("Multi-Arch") == "same" and arch:
                name = f"{name}:{arch}"
            result[name] = fields.get("Version", "")
    return dict(sorted(result.items()))


def desktop_entries(image: ImageRoot) -> list[dict[str, str]]:
    """Raw text of the image's ``/usr/share/applications/*.desktop`` files, size-capped. An
    entry that is a link is read where it leads inside the image; one that leads nowhere
    there (or to something not a regular file, or too big) is left out."""
    entries: list[dict[str, str]] = []
    appdir = "usr/share/applications"
    if not image.is_dir(appdir):
        return entries
    names = [n for n in image.listdir(appdir) if n.endswith(".desktop")]
    for name in names[:DESKTOP_ENTRIES_MAX]:
        try:
            text = image.read_text(f"{appdir}/{name}", DESKTOP_ENTRY_MAX_BYTES)
        except OSError:
            continue
        entries.append({"file": name, "text": text})
    return entries


# mmdebstrap has the API filesystems mounted while hooks run; the guest mounts its own.
EROFS_EXCLUDE = r"^(dev|proc|sys|run|tmp)/."


def erofs_command(root: Path, output: Path, compression: str) -> list[str]:
    command = ["mkfs.erofs", "--quiet", f"--exclude-regex={EROFS_EXCLUDE}"]
    if compression != "none":
        command.append(f"-z{compression}")
    return [*command, str(output), str(root)]


def pack(root: Path, outdir: Path, compression: str) -> dict[str, Any]:
    with ImageRoot(root) as image:
        return _pack(image, root, outdir, compression)


def _pack(image: ImageRoot, root: Path, outdir: Path, compression: str) -> dict[str, Any]:
    version = kernel_version(image)
    packages = installed_packages(image.read_text("var/lib/dpkg/status", DPKG_STATUS_MAX_BYTES))
    entries = desktop_entries(image)
    icons.collect(root, entries, outdir / "icons")
    clean_root(image)

    stage("pack")
    # A non-recursive bind mount shows the root without the API filesystems mmdebstrap has
    # mounted inside it (mkfs.erofs reads xattrs before it applies its exclusions).
    view = Path(tempfile.mkdtemp(prefix="root-view-", dir=outdir.parent))
    proc.run(["mount", "--bind", str(root), str(view)])
    try:
        proc.run(erofs_command(view, outdir / "rootfs.erofs", compression))
    finally:
        proc.run(["umount", str(view)])
        view.rmdir()

    stage("kernel+initramfs")
    image.copy_out(f"boot/vmlinuz-{version}", outdir / "vmlinuz", KERNEL_MAX_BYTES)
    built = initramfs.build(image, version)
    (outdir / "initrd.img").write_bytes(built.archive)
    info: dict[str, Any] = {
        "kernelVersion": version,
        "initramfsModules": built.modules,
        "packages": packages,
        "desktopEntries": entries,
    }
    (outdir / "pack.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print("usage: python -m vmsilo.image.pack ROOT OUTDIR COMPRESSION", file=sys.stderr)
        return 2
    try:
        pack(Path(args[0]), Path(args[1]), args[2])
    except (initramfs.InitramfsError, proc.ProcessError, OSError) as exc:
        print(f"vmsilo-pack: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
