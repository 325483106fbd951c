"""Icons of a guest's desktop entries, found at image build time inside the image root.

An entry's ``Icon`` (of its ``[Desktop Entry]`` group only: an ``Icon`` of a ``[Desktop Action
…]`` group is that action's, never the application's) is a theme name (looked up in the
image's hicolor, breeze and Adwaita themes, largest size first, then ``/usr/share/pixmaps``) or
an absolute path. Every path is resolved inside the image root as the guest would see it, as
if the root were ``/`` (``resolve_in_root``, the semantics of openat2's RESOLVE_IN_ROOT): an
absolute symlink target starts again at the image root (``…/apps/x.png -> /usr/lib/app/x.png``
is the image's ``/usr/lib/app/x.png``, never the host's) and ``..`` stops at the root, so no
path or link ever leads out of the image. A found file must be a real
PNG (at most 1024x1024), SVG or XPM of at most 1 MiB; it is copied into the image's ``icons/``
directory under a safe name and the entry records that name. Nothing here runs guest code.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import struct
from pathlib import Path

from vmsilo.desktop.entry import main_group_value
from vmsilo.desktop.names import encode_part

THEMES = ("hicolor", "breeze", "Adwaita")
SIZES = ("scalable", "512x512", "256x256", "128x128", "96x96", "64x64", "48x48", "32x32",
         "24x24", "22x22", "16x16")  # fmt: skip
CONTEXTS = ("apps", "applications")
EXTENSIONS = (".svg", ".png", ".xpm")
MAX_ICON_BYTES = 1 << 20
MAX_PNG_SIDE = 1024
_NAME = re.compile(r"^[A-Za-z0-9_.+-]{1,128}$")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_LINKS = 40  # symlinks followed in one resolution, as the kernel's ELOOP limit


def resolve_in_root(root: Path, path: str) -> Path | None:
    """The host path of the image's ``path`` (absolute or relative to the image's ``/``),
    every symlink on the way followed *inside* ``root``: an absolute target restarts at
    ``root``, ``..`` never climbs above it. None if a component is missing or not a
    directory, or more than ``MAX_LINKS`` links are met. The result is ``root`` joined with
    link-free components (``root`` itself is the caller's, trusted, and resolved first)."""
    base = root.resolve()
    done: list[str] = []  # components below root, each a real directory (or the last, any)
    # "" and "." stay in the queue: they change nothing, but like any later component they
    # require what comes before them to be a directory ("icon.png/." is no file).
    pending = path.split("/")
    pending.reverse()
    links = 0
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        here = base.joinpath(*done, part)
        try:
            info = os.lstat(here)
        except OSError:
            return None
        if stat.S_ISLNK(info.st_mode):
            links += 1
            if links > MAX_LINKS:
                return None
            try:
                target = os.readlink(here)
            except OSError:
                return None
            if target.startswith("/"):
                done = []
            pending.extend(reversed(target.split("/")))
            continue
        if pending and not stat.S_ISDIR(info.st_mode):
            return None
        done.append(part)
    return base.joinpath(*done)


def _inside(root: Path, candidate: Path) -> Path | None:
    """``candidate`` (a path in the image) if it resolves inside ``root`` to a regular file."""
    real = resolve_in_root(root, str(candidate))
    if real is None:
        return None
    try:
        return real if stat.S_ISREG(os.lstat(real).st_mode) else None
    except OSError:
        return None


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
    """Give each entry whose main icon is found an ``icon`` file name in ``icon_dir``: the
    entry's file name without ``.desktop``, encoded injectively (``names.encode_part``), and
    the icon's extension, so no two entries share an icon file."""
    for entry in entries:
        icon = main_group_value(entry.get("text", ""), "Icon")
        if not icon:
            continue
        found = find_icon(root, icon)
        if found is None:
            continue
        extension = valid_icon(found)
        assert extension is not None
        stem = encode_part(entry["file"].removesuffix(".desktop"), keep_dash=True)
        name = f"{stem}{extension}"
        if len(name.encode()) > 255:  # NAME_MAX: such an entry goes without its icon
            continue
        icon_dir.mkdir(exist_ok=True)
        shutil.copyfile(found, icon_dir / name)
        os.chmod(icon_dir / name, 0o644)
        entry["icon"] = name
