"""Icons of a guest's desktop entries, found at image build time inside the image root.

An entry's ``Icon`` is a theme name (looked up in the image's hicolor, breeze and Adwaita
themes, largest size first, then ``/usr/share/pixmaps``) or an absolute path (resolved inside
the root: a symlink or ``..`` that leads out of it finds nothing). A found file must be a real
PNG (at most 1024x1024), SVG or XPM of at most 1 MiB; it is copied into the image's ``icons/``
directory under a safe name and the entry records that name. Nothing here runs guest code.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
from pathlib import Path

THEMES = ("hicolor", "breeze", "Adwaita")
SIZES = ("scalable", "512x512", "256x256", "128x128", "96x96", "64x64", "48x48", "32x32",
         "24x24", "22x22", "16x16")  # fmt: skip
CONTEXTS = ("apps", "applications")
EXTENSIONS = (".svg", ".png", ".xpm")
MAX_ICON_BYTES = 1 << 20
MAX_PNG_SIDE = 1024
_NAME = re.compile(r"^[A-Za-z0-9_.+-]{1,128}$")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _inside(root: Path, candidate: Path) -> Path | None:
    """``candidate`` (a path in the image) if it resolves to a regular file inside ``root``."""
    try:
        real = (root / candidate.relative_to("/")).resolve(strict=True)
        real.relative_to(root.resolve())
    except (OSError, ValueError, RuntimeError):
        return None
    return real if real.is_file() else None


def valid_icon(path: Path) -> str | None:
    """The icon's extension if the file is what it claims, else None."""
    try:
        if path.stat().st_size > MAX_ICON_BYTES:
            return None
        head = path.read_bytes()[:4096]
    except OSError:
        return None
    suffix = path.suffix.lower()
    if suffix == ".png":
        if not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
            return None
        width, height = struct.unpack(">II", head[16:24])
        return ".png" if 0 < width <= MAX_PNG_SIDE and 0 < height <= MAX_PNG_SIDE else None
    if suffix == ".svg":
        text = head.decode("utf-8", errors="replace")
        return ".svg" if "<svg" in text else None
    if suffix == ".xpm":
        return ".xpm" if head.startswith(b"/* XPM */") else None
    return None


def find_icon(root: Path, icon: str) -> Path | None:
    if icon.startswith("/"):
        found = _inside(root, Path(icon))
        return found if found is not None and valid_icon(found) else None
    if not _NAME.match(icon):
        return None
    candidates = [
        Path("/usr/share/icons") / theme / size / context / f"{icon}{ext}"
        for theme in THEMES for size in SIZES for context in CONTEXTS for ext in EXTENSIONS
    ] + [Path("/usr/share/pixmaps") / f"{icon}{ext}" for ext in EXTENSIONS]
    for candidate in candidates:
        found = _inside(root, candidate)
        if found is not None and valid_icon(found):
            return found
    return None


def collect(root: Path, entries: list[dict[str, str]], icon_dir: Path) -> None:
    """Give each entry whose icon is found an ``icon`` file name in ``icon_dir``."""
    icon_key = re.compile(r"^Icon=(.*)$", re.MULTILINE)
    for entry in entries:
        match = icon_key.search(entry.get("text", ""))
        if match is None:
            continue
        found = find_icon(root, match.group(1).strip())
        if found is None:
            continue
        extension = valid_icon(found)
        assert extension is not None
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", entry["file"].removesuffix(".desktop"))
        name = f"{stem}{extension}"
        icon_dir.mkdir(exist_ok=True)
        shutil.copyfile(found, icon_dir / name)
        os.chmod(icon_dir / name, 0o644)
        entry["icon"] = name
