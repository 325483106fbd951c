"""The last build step, run by mmdebstrap as a customize hook on the finished root.

It runs inside mmdebstrap's namespace (so in unshare mode it sees the root with the right
owners), removes what a VM image does not need (apt caches and lists, /tmp), packs the root
with ``mkfs.erofs``, copies the kernel out of ``/boot``, writes our initramfs, and records
what the manifest needs (kernel version, packages, desktop entries) in ``pack.json``. The
build module assembles the manifest from it. Invoked as
``python -m vmsilo.image.pack ROOT OUTDIR COMPRESSION``.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from vmsilo.desktop import icons
from vmsilo.host import proc
from vmsilo.image import initramfs

DESKTOP_ENTRY_MAX_BYTES = 64 * 1024
DESKTOP_ENTRIES_MAX = 1000

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


def clean_root(root: Path) -> None:
    for rel in _JUNK:
        path = root / rel
        if path.is_dir() and not path.is_symlink():
            for child in path.iterdir():
                if child.is_dir() and not child.is_symlink():
                    if child.name != "partial":
                        shutil.rmtree(child)
                elif child.name != "lock":
                    child.unlink()
        elif path.exists():
            path.unlink()
    for child in (root / "tmp").iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    # Empty (not "uninitialized"): systemd makes a transient id per boot and every VM
    # started from this image gets its own.
    (root / "etc/machine-id").write_text("")


def kernel_version(root: Path) -> str:
    versions = sorted(p.name for p in (root / "lib/modules").iterdir() if p.is_dir())
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


def desktop_entries(root: Path) -> list[dict[str, str]]:
    """Raw text of the image's ``/usr/share/applications/*.desktop`` files, size-capped."""
    entries: list[dict[str, str]] = []
    appdir = root / "usr/share/applications"
    if not appdir.is_dir():
        return entries
    for path in sorted(appdir.glob("*.desktop"))[:DESKTOP_ENTRIES_MAX]:
        if not path.is_file() or path.stat().st_size > DESKTOP_ENTRY_MAX_BYTES:
            continue
        entries.append({"file": path.name, "text": path.read_text(errors="replace")})
    return entries


# mmdebstrap has the API filesystems mounted while hooks run; the guest mounts its own.
EROFS_EXCLUDE = r"^(dev|proc|sys|run|tmp)/."


def erofs_command(root: Path, output: Path, compression: str) -> list[str]:
    command = ["mkfs.erofs", "--quiet", f"--exclude-regex={EROFS_EXCLUDE}"]
    if compression != "none":
        command.append(f"-z{compression}")
    return [*command, str(output), str(root)]


def pack(root: Path, outdir: Path, compression: str) -> dict[str, Any]:
    version = kernel_version(root)
    packages = installed_packages((root / "var/lib/dpkg/status").read_text())
    entries = desktop_entries(root)
    icons.collect(root, entries, outdir / "icons")
    clean_root(root)

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
    shutil.copyfile(root / "boot" / f"vmlinuz-{version}", outdir / "vmlinuz")
    built = initramfs.build(root, version)
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
