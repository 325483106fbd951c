"""The host menu files: one entry per guest application, a folder per VM, and removal of what
is no longer wanted; as the user runs it (argv in, files out) where it matters."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from vmsilo.desktop.install import Targets, install

GOOD = {"file": "xterm.desktop",
        "text": "[Desktop Entry]\nType=Application\nName=XTerm\nExec=xterm\nCategories=System;\n"}
EVIL = {"file": "evil.desktop", "text": "[Desktop Entry]\nType=Application\nName=E\nExec=a;b\n"}


def test_entries_and_a_folder_per_vm_then_removal(tmp_path: Path) -> None:
    targets = Targets.for_home(tmp_path)
    report = install({"work": [GOOD, EVIL], "web": [GOOD]}, targets)
    apps = sorted(p.name for p in targets.applications.iterdir())
    assert apps == ["vmsilo-web-xterm.desktop", "vmsilo-work-xterm.desktop"]
    assert report.rejected == ["work: evil.desktop: Exec has the reserved character ';' "
                               "outside quotes"]
    menu = (targets.menus / "vmsilo-work.menu").read_text()
    assert "<Category>X-vmsilo-work</Category>" in menu
    assert "Name=work" in (targets.directories / "vmsilo-work.directory").read_text()
    (targets.applications / "someone-else.desktop").write_text("not ours")

    report = install({"work": [GOOD]}, targets)  # "web" left the config
    assert sorted(p.name for p in targets.applications.iterdir()) == [
        "someone-else.desktop", "vmsilo-work-xterm.desktop"]
    assert not (targets.menus / "vmsilo-web.menu").exists()
    assert {p.name for p in report.removed} == {"vmsilo-web-xterm.desktop", "vmsilo-web.menu",
                                                "vmsilo-web.directory"}
    assert install({"work": [GOOD]}, targets).written == []  # nothing changed: nothing written


@pytest.mark.allow_subprocess
@pytest.mark.skipif(shutil.which("desktop-file-validate") is None,
                    reason="desktop-file-validate is not installed")
def test_every_generated_file_validates(tmp_path: Path) -> None:
    targets = Targets.for_home(tmp_path)
    install({"work": [GOOD]}, targets)
    for path in [*targets.applications.iterdir(), *targets.directories.iterdir()]:
        result = subprocess.run(["desktop-file-validate", str(path)], capture_output=True,
                                text=True)
        assert result.returncode == 0, (path, result.stdout)


def test_icons_are_copied_with_vm_prefixed_names(tmp_path: Path) -> None:
    icons = tmp_path / "image-icons"
    icons.mkdir()
    (icons / "xterm.svg").write_text("<svg/>")
    entry = {**GOOD, "icon": "xterm.svg"}
    sneaky = {**GOOD, "file": "sneaky.desktop", "icon": "../../etc/passwd"}
    targets = Targets.for_home(tmp_path / "home")
    install({"work": [entry, sneaky]}, targets, icon_dirs={"work": icons})
    copied = targets.icons / "vmsilo-work-xterm.svg"
    assert copied.read_text() == "<svg/>"
    assert f"Icon={copied}" in (targets.applications / "vmsilo-work-xterm.desktop").read_text()
    assert "Icon=" not in (targets.applications / "vmsilo-work-sneaky.desktop").read_text()
