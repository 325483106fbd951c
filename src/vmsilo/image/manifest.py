"""``manifest.json``: what an image holds and how it was built.

Written last into the build directory (its presence marks a complete image) and read by
``vmsilo image list`` and, later, the desktop integration (``desktopEntries``). Reading is
forgiving about unknown keys so that older tools can list newer images.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmsilo.image.spec import ImageSpec

MANIFEST = "manifest.json"
IMAGE_FILES = ("rootfs.erofs", "vmlinuz", "initrd.img")


def assemble(
    spec: ImageSpec,
    pack_info: dict[str, Any],
    image_dir: Path,
    *,
    built_at: str,
    build_seconds: float,
    compression: str,
) -> dict[str, Any]:
    sizes = {name: (image_dir / name).stat().st_size for name in IMAGE_FILES}
    return {
        "format": 1,
        "digest": spec.digest(),
        "spec": spec.to_json(),
        "builtAt": built_at,
        "buildSeconds": round(build_seconds, 1),
        "erofsCompression": compression,
        "kernelVersion": pack_info["kernelVersion"],
        "initramfsModules": pack_info["initramfsModules"],
        "sizes": sizes,
        "packages": pack_info["packages"],
        "desktopEntries": pack_info["desktopEntries"],
    }


def write(image_dir: Path, manifest: dict[str, Any]) -> None:
    (image_dir / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


@dataclass(frozen=True)
class ImageInfo:
    """The summary ``vmsilo image list`` shows."""

    digest: str
    path: Path
    built_at: str
    kernel_version: str
    size: int


def read(image_dir: Path) -> ImageInfo | None:
    """The image in ``image_dir``, or None if it is not a complete image."""
    try:
        data = json.loads((image_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    size = sum(p.stat().st_size for p in image_dir.rglob("*") if p.is_file() and not p.is_symlink())
    return ImageInfo(
        digest=str(data.get("digest", image_dir.name)),
        path=image_dir,
        built_at=str(data.get("builtAt", "?")),
        kernel_version=str(data.get("kernelVersion", "?")),
        size=size,
    )


def desktop_entries(image_dir: Path) -> list[dict[str, Any]]:
    """The desktop entries the build collected (``[]`` for a missing or unreadable image)."""
    try:
        data = json.loads((image_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return []
    entries = data.get("desktopEntries", []) if isinstance(data, dict) else []
    return [entry for entry in entries if isinstance(entry, dict)]
