"""Icons found in an image root at build time: theme lookup, validation of what the file is,
and paths that try to leave the root."""

from __future__ import annotations

import os
import struct
from pathlib import Path

from vmsilo.desktop.icons import collect, find_icon, resolve_in_root

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR" + struct.pack(">II", 48, 48) + b"\x08\x06"


def _file(root: Path, path: str, data: bytes) -> Path:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return target


def test_theme_lookup_prefers_scalable_then_large(tmp_path: Path) -> None:
    _file(tmp_path, "usr/share/icons/hicolor/48x48/apps/calc.png", PNG)
    assert find_icon(tmp_path, "calc") == tmp_path / "usr/share/icons/hicolor/48x48/apps/calc.png"
    svg = _file(tmp_path, "usr/share/icons/hicolor/scalable/apps/calc.svg", b"<svg></svg>")
    assert find_icon(tmp_path, "calc") == svg


def test_fallbacks_to_other_themes_and_pixmaps(tmp_path: Path) -> None:
    breeze = _file(tmp_path, "usr/share/icons/breeze/apps/64x64/x.svg", b"<svg/>")
    assert find_icon(tmp_path, "x") is None  # breeze's layout differs: not in our paths
    breeze.unlink()
    pixmap = _file(tmp_path, "usr/share/pixmaps/xterm.xpm", b"/* XPM */\nstatic char *x[] = {};")
    assert find_icon(tmp_path, "xterm") == pixmap


def test_files_that_are_not_what_they_claim_are_refused(tmp_path: Path) -> None:
    _file(tmp_path, "usr/share/pixmaps/fake.png", b"GIF89a")
    huge = PNG[:16] + struct.pack(">II", 100000, 1) + PNG[24:]
    _file(tmp_path, "usr/share/pixmaps/huge.png", huge)
    _file(tmp_path, "usr/share/pixmaps/big.svg", b"<svg>" + b" " * (2 << 20))
    for name in ("fake", "huge", "big"):
        assert find_icon(tmp_path, name) is None, name


def test_paths_never_leave_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    outside = _file(tmp_path, "secret.png", PNG)
    assert find_icon(root, "../secret") is None
    assert find_icon(root, "/../secret.png") is None
    link = root / "usr/share/pixmaps/link.png"
    link.parent.mkdir(parents=True)
    link.symlink_to(outside)
    assert find_icon(root, "link") is None
    assert find_icon(root, "/usr/share/pixmaps/link.png") is None
    inside = _file(root, "opt/app/icon.png", PNG)
    assert find_icon(root, "/opt/app/icon.png") == inside


def test_collect_copies_and_records(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _file(root, "usr/share/icons/hicolor/48x48/apps/calc.png", PNG)
    entries = [{"file": "org.calc.desktop", "text": "[Desktop Entry]\nIcon=calc\n"},
               {"file": "none.desktop", "text": "[Desktop Entry]\nIcon=missing\n"}]
    collect(root, entries, tmp_path / "icons")
    assert entries[0]["icon"] == "org.calc.png"
    assert (tmp_path / "icons" / "org.calc.png").read_bytes() == PNG
    assert "icon" not in entries[1]


def test_an_absolute_link_resolves_inside_the_image(tmp_path: Path) -> None:
    """Issue 15, item 4: ``…/48x48/apps/x.png -> /usr/lib/app/x.png`` is the image's file."""
    root = tmp_path / "root"
    real = _file(root, "usr/lib/app/x.png", PNG)
    link = root / "usr/share/icons/hicolor/48x48/apps/x.png"
    link.parent.mkdir(parents=True)
    link.symlink_to("/usr/lib/app/x.png")
    assert find_icon(root, "x") == real
    assert find_icon(root, "/usr/share/icons/hicolor/48x48/apps/x.png") == real
    entries = [{"file": "x.desktop", "text": "[Desktop Entry]\nIcon=x\n"}]
    collect(root, entries, tmp_path / "icons")
    assert (tmp_path / "icons" / entries[0]["icon"]).read_bytes() == PNG


def test_links_never_leave_the_image_whatever_they_say(tmp_path: Path) -> None:
    root = tmp_path / "root"
    host_icon = _file(tmp_path, "usr/lib/app/y.png", PNG)  # the "host's" file, outside root
    pixmaps = root / "usr/share/pixmaps"
    pixmaps.mkdir(parents=True)
    (pixmaps / "abs.png").symlink_to(host_icon)  # absolute: means the image's path
    (pixmaps / "dots.png").symlink_to("../../../../../../../../" + str(host_icon))
    (pixmaps / "dir").symlink_to("/")  # the image's root, not the host's
    (pixmaps / "loop.png").symlink_to("loop.png")
    for name in ("abs", "dots", "loop"):
        assert find_icon(root, name) is None, name
    assert find_icon(root, "/usr/share/pixmaps/dir" + str(host_icon)) is None
    assert resolve_in_root(root, "/usr/share/pixmaps/dir/usr/../../..") == root.resolve()
    inside = _file(root, str(host_icon), PNG)  # the same path inside the image: found there
    assert find_icon(root, "abs") == inside and find_icon(root, "dots") == inside


def test_an_icon_of_an_action_is_not_the_applications(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _file(root, "usr/share/icons/hicolor/48x48/apps/action.png", PNG)
    _file(root, "usr/share/icons/hicolor/48x48/apps/main.png", PNG)
    entries = [
        {"file": "a.desktop", "text": "[Desktop Entry]\nName=A\nActions=n;\n\n"
                                      "[Desktop Action n]\nIcon=action\n"},
        {"file": "b.desktop", "text": "[Desktop Action n]\nIcon=action\n"
                                      "[Desktop Entry]\nIcon=main\n"},
    ]
    collect(root, entries, tmp_path / "icons")
    assert "icon" not in entries[0]
    assert entries[1]["icon"] == "b.png"


def test_icon_names_in_the_image_are_injective(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _file(root, "usr/share/pixmaps/one.png", PNG)
    _file(root, "usr/share/pixmaps/two.svg", b"<svg/>")
    entries = [{"file": "a b.desktop", "text": "[Desktop Entry]\nIcon=one\n"},
               {"file": "a_b.desktop", "text": "[Desktop Entry]\nIcon=two\n"},
               {"file": "a_20b.desktop", "text": "[Desktop Entry]\nIcon=one\n"}]
    collect(root, entries, tmp_path / "icons")
    names = [e["icon"] for e in entries]
    assert names == ["a_20b.png", "a_5Fb.svg", "a_5F20b.png"]


def test_a_fifo_or_a_directory_named_like_an_icon_is_no_icon(tmp_path: Path) -> None:
    pixmaps = tmp_path / "usr/share/pixmaps"
    pixmaps.mkdir(parents=True)
    os.mkfifo(pixmaps / "fifo.png")  # opening it for reading must not hang the build
    (pixmaps / "dir.svg").mkdir()
    assert find_icon(tmp_path, "fifo") is None
    assert find_icon(tmp_path, "dir") is None
