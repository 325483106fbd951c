"""Icons of a guest's desktop entries, found at image build time inside the image root.

An entry's ``Icon`` (of its ``[Desktop Entry]`` group only: an ``Icon`` of a ``[Desktop Action
…]`` group is that action's, never the application's) is a theme name (looked up in the
image's hicolor, breeze and Adwaita themes, largest size first, then ``/usr/share/pixmaps``) or
an absolute path. Every path is resolved inside the image root as the guest would see it,
through ``vmsilo.image.imageroot.ImageRoot`` (the semantics of openat2's ``RESOLVE_IN_ROOT |
RESOLVE_NO_XDEV``, walked one descriptor at a time): an absolute symlink target starts again at
the image root (``…/apps/x.png -> /usr/lib/app/x.png`` is the image's ``/usr/lib/app/x.png``,
never the host's), ``..`` stops at the root, and nothing on another filesystem (the host's
``/proc``, ``/sys`` or ``/dev`` that mmdebstrap mounts inside the root while hooks run) is
read. So no path or link ever leads out of the image.

A found file must be a real PNG (at most 1024x1024), SVG or XPM of at most 1 MiB, judged on the
very bytes that are copied; it is copied into the image's ``icons/`` directory under a name
made from the entry's file name (injective: ``vmsilo.desktop.names.encode_part``) and the entry
records that name. Nothing here runs guest code.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path, PurePosixPath

from vmsilo.desktop.entry import main_group_value
from vmsilo.desktop.names import NAME_MAX, encode_part
from vmsilo.image.imageroot import ImageRoot

THEMES = ("hicolor", "breeze", "Adwaita")
SIZES = ("scalable", "512x512", "256x256", "128x128", "96x96", "64x64", "48x48", "32x32",
         "24x24", "22x22", "16x16")  # fmt: skip
CONTEXTS = ("apps", "applications")
EXTENSIONS = (".svg", ".png", ".xpm")
MAX_ICON_BYTES = 1 << 20
MAX_PNG_SIDE = 1024
_NAME = re.compile(r"[A-Za-z0-9_.+-]{1,128}")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def icon_kind(name: str, data: bytes) -> str | None:
    """The extension (".png", ".svg", ".xpm") of an icon file called ``name`` whose content is
    ``data``, if the content is what the name claims and within the limits; else None."""
    if len(data) > MAX_ICON_BYTES:
        return None
    head = data[:4096]
    suffix = PurePosixPath(name).suffix.lower()
    if suffix == ".png":
        if not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR" or len(head) < 24:
            return None
        width, height = struct.unpack(">II", head[16:24])
        return ".png" if 0 < width <= MAX_PNG_SIDE and 0 < height <= MAX_PNG_SIDE else None
    if suffix == ".svg":
        return ".svg" if "<svg" in head.decode("utf-8", errors="replace") else None
    if suffix == ".xpm":
        return ".xpm" if head.startswith(b"/* XPM */") else None
    return None


def resolve_in_root(root: Path, path: str) -> Path | None:
    """The host path of the image's ``path`` (absolute or relative to the image's ``/``),
    resolved inside ``root`` (see the module text); None if it leads nowhere there. For
    callers that show or compare paths: reading goes through ``ImageRoot``, never this."""
    with ImageRoot(root) as image:
        try:
            inside = image.resolve(path)
        except OSError:
            return None
    return root.resolve().joinpath(*inside.parts[1:])


def _candidates(icon: str) -> list[str]:
    if icon.startswith("/"):
        return [icon]
    if not _NAME.fullmatch(icon):
        return []
    return [f"/usr/share/icons/{theme}/{size}/{context}/{icon}{ext}"
            for theme in THEMES for size in SIZES for context in CONTEXTS for ext in EXTENSIONS
            ] + [f"/usr/share/pixmaps/{icon}{ext}" for ext in EXTENSIONS]


def _find(image: ImageRoot, icon: str) -> tuple[str, bytes, str] | None:
    """(image path, content, extension) of the first valid icon file for ``icon``."""
    for candidate in _candidates(icon):
        try:
            data = image.read_bytes(candidate, MAX_ICON_BYTES)
        except OSError:  # missing, not a regular file, too big, a link out of the root fs
            continue
        kind = icon_kind(candidate, data)
        if kind is not None:
            return candidate, data, kind
    return None


def find_icon(root: Path, icon: str) -> Path | None:
    """The host path of the image file that ``icon`` (a theme name or an absolute image path)
    names, resolved inside ``root``, if it is a valid icon; else None."""
    with ImageRoot(root) as image:
        found = _find(image, icon)
        if found is None:
            return None
        inside = image.resolve(found[0])
    return root.resolve().joinpath(*inside.parts[1:])


def collect(root: Path, entries: list[dict[str, str]], icon_dir: Path) -> None:
    """Give each entry whose main icon is found an ``icon`` file name in ``icon_dir``: the
    entry's file name without ``.desktop``, encoded injectively (``names.encode_part``), and
    the icon's extension, so no two entries share an icon file."""
    with ImageRoot(root) as image:
        for entry in entries:
            icon = main_group_value(entry.get("text", ""), "Icon")
            if not icon:
                continue
            found = _find(image, icon)
            if found is None:
                continue
            _, data, extension = found
            stem = encode_part(entry["file"].removesuffix(".desktop"), keep_dash=True)
            name = f"{stem}{extension}"
            if len(name.encode()) > NAME_MAX:  # such an entry goes without its icon
                continue
            icon_dir.mkdir(exist_ok=True)
            target = icon_dir / name
            target.write_bytes(data)
            os.chmod(target, 0o644)
            entry["icon"] = name
