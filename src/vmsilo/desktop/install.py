"""Writing the host menu for the configured user: one desktop entry per guest application of
each VM (from the entries its image manifest collected at build time), a menu folder per VM
(an XDG menu merge file and a directory entry), and removal of everything vmsilo wrote before
that is no longer wanted (VMs gone from the config, applications gone from an image).

Every file vmsilo owns is named ``vmsilo-…`` so that removal never touches anything else, and
names are injective (``vmsilo.desktop.names``): no two (VM, guest file) pairs share an entry or
an icon file. Each entry's file is written from ``vmsilo.desktop.entry.render``, whose values
are all encoded for the Desktop Entry format; keys the guest's entry had that could not be used
are reported (``Report.dropped``) along with whole entries left out (``Report.rejected``).

This runs as the user whose home it writes (``vmsilo.desktop.menu`` starts it as a child that
dropped to that user when root asks): it follows whatever the user put in their home with the
user's own rights, and never changes an owner.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from vmsilo.desktop.entry import EntryRejected, encode_string, parse, render
from vmsilo.desktop.names import PREFIX, encode_part, entry_stem
from vmsilo.protocol.text import clean_display_text

log = logging.getLogger(__name__)

ICON_EXTENSIONS = (".png", ".svg", ".xpm")


@dataclass(frozen=True)
class Targets:
    applications: Path  # $XDG_DATA_HOME/applications
    directories: Path  # $XDG_DATA_HOME/desktop-directories
    menus: Path  # $XDG_CONFIG_HOME/menus/applications-merged
    icons: Path  # $XDG_DATA_HOME/vmsilo/icons: entries name their icon by absolute path

    @classmethod
    def for_home(cls, home: Path) -> Targets:
        data = home / ".local" / "share"
        return cls(data / "applications", data / "desktop-directories",
                   home / ".config" / "menus" / "applications-merged",
                   data / "vmsilo" / "icons")


@dataclass
class Report:
    written: list[Path] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)  # "<vm>: <file>: <reason>"
    dropped: list[str] = field(default_factory=list)  # "<vm>: <file>: <key>: <why>"


def category(vm: str) -> str:
    """The menu category of ``vm``'s entries (injective in ``vm``: one encoded part)."""
    return f"X-vmsilo-{_one_part(vm)}"


def _one_part(vm: str) -> str:
    """``vm`` in a name where it is the only variable part (menu, folder, category): ``-``
    may stay, nothing follows it to be confused with."""
    return encode_part(vm, keep_dash=True)


def entry_name(vm: str, file_id: str) -> str:
    """The host file name of ``vm``'s ``file_id`` (see ``vmsilo.desktop.names``)."""
    return entry_stem(vm, file_id) + ".desktop"


def menu_file(vm: str) -> str:
    name = f"{PREFIX}{_one_part(vm)}"
    return f"""<!DOCTYPE Menu PUBLIC "-//freedesktop//DTD Menu 1.0//EN"
 "http://www.freedesktop.org/standards/menu-spec/1.0/menu.dtd">
<Menu>
  <Name>Applications</Name>
  <Menu>
    <Name>{escape(name)}</Name>
    <Directory>{escape(name)}.directory</Directory>
    <Include>
      <Category>{escape(category(vm))}</Category>
    </Include>
  </Menu>
</Menu>
"""


def directory_file(vm: str) -> str:
    return (f"[Desktop Entry]\nType=Directory\nName={encode_string(vm)}\n"
            f"Comment={encode_string(f'Applications of the VM {vm}')}\n")


def _write(path: Path, text: str, report: Report) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.read_text(encoding="utf-8", errors="replace") == text:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")  # the format's encoding, whatever the locale
    tmp.replace(path)
    report.written.append(path)


def _copy_icon(source: Path, target: Path, report: Report) -> bool:
    try:
        data = source.read_bytes()
    except OSError:
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    if not (target.exists() and target.read_bytes() == data):
        target.write_bytes(data)
        report.written.append(target)
    return True


def install(
    entries_by_vm: dict[str, list[dict[str, Any]]],
    targets: Targets,
    icon_dirs: dict[str, Path] | None = None,
) -> Report:
    """``entries_by_vm``: each configured VM's manifest ``desktopEntries`` (``[]`` for a VM
    whose image is not built yet: its folder is kept, empty); ``icon_dirs``: each VM's image
    ``icons/`` directory, where an entry's ``icon`` file lives."""
    report = Report()
    wanted: set[Path] = set()
    for vm, entries in sorted(entries_by_vm.items()):
        for raw in entries:
            file_id = str(raw.get("file", ""))
            # The guest chose the file name: shown in reports and logs only cleaned (no
            # terminal escapes, no line breaks).
            shown = clean_display_text(file_id, max_len=255)
            try:
                stem = entry_stem(vm, file_id)
                entry = parse(file_id, str(raw.get("text", "")).encode())
                icon_path = None
                icon_file = raw.get("icon")
                source_dir = (icon_dirs or {}).get(vm)
                extension = Path(icon_file).suffix if isinstance(icon_file, str) else ""
                if (isinstance(icon_file, str) and source_dir is not None
                        and "/" not in icon_file and icon_file not in (".", "..")
                        and extension in ICON_EXTENSIONS):
                    target = targets.icons / f"{stem}{extension}"
                    if _copy_icon(source_dir / icon_file, target, report):
                        icon_path = str(target)
                        wanted.add(target)
                text = render(entry, vm, icon_path, category(vm))
            except (EntryRejected, ValueError) as exc:
                report.rejected.append(f"{vm}: {shown}: {exc}")
                log.info("VM %s: desktop entry %s left out: %s", vm, shown, exc)
                continue
            for what in entry.dropped:
                report.dropped.append(f"{vm}: {shown}: {what}")
                log.info("VM %s: desktop entry %s: dropped %s", vm, shown, what)
            path = targets.applications / f"{stem}.desktop"
            _write(path, text, report)
            wanted.add(path)
        menu = targets.menus / f"{PREFIX}{_one_part(vm)}.menu"
        directory = targets.directories / f"{PREFIX}{_one_part(vm)}.directory"
        _write(menu, menu_file(vm), report)
        _write(directory, directory_file(vm), report)
        wanted |= {menu, directory}
    for folder in (targets.applications, targets.menus, targets.directories, targets.icons):
        if not folder.is_dir():
            continue
        for path in folder.glob(f"{PREFIX}*"):
            if path not in wanted and path.is_file():
                path.unlink()
                report.removed.append(path)
    return report
