"""The host menu files: one entry per guest application, a folder per VM, and removal of what
is no longer wanted; as the user runs it (argv in, files out) where it matters."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from rich.console import Console

from vmsilo.cli.desktop_cmd import print_report
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


def test_names_are_injective_across_vms(tmp_path: Path) -> None:
    """Issue 15, item 3: VM ``a`` + ``b-c.desktop`` and VM ``a-b`` + ``c.desktop``."""
    targets = Targets.for_home(tmp_path)
    one = {**GOOD, "file": "b-c.desktop"}
    two = {**GOOD, "file": "c.desktop",
           "text": GOOD["text"].replace("Name=XTerm", "Name=Other")}
    install({"a": [one], "a-b": [two]}, targets)
    files = {p.name: p.read_text() for p in targets.applications.iterdir()}
    assert sorted(files) == ["vmsilo-a-b-c.desktop", "vmsilo-a_2Db-c.desktop"]
    assert "Name=[a] XTerm" in files["vmsilo-a-b-c.desktop"]
    assert "Name=[a-b] Other" in files["vmsilo-a_2Db-c.desktop"]
    assert {p.name for p in targets.menus.iterdir()} == {"vmsilo-a.menu", "vmsilo-a-b.menu"}


def test_icons_of_entries_are_injective_and_named_by_the_entry(tmp_path: Path) -> None:
    icons = tmp_path / "image-icons"
    icons.mkdir()
    (icons / "one.svg").write_text("<svg>1</svg>")
    (icons / "two.svg").write_text("<svg>2</svg>")
    entries = [{**GOOD, "file": "b-c.desktop", "icon": "one.svg"}]
    other = [{**GOOD, "file": "c.desktop", "icon": "two.svg"},
             {**GOOD, "file": "bad.desktop", "icon": "two.exe"}]
    targets = Targets.for_home(tmp_path / "home")
    install({"a": entries, "a-b": other}, targets, {"a": icons, "a-b": icons})
    assert (targets.icons / "vmsilo-a-b-c.svg").read_text() == "<svg>1</svg>"
    assert (targets.icons / "vmsilo-a_2Db-c.svg").read_text() == "<svg>2</svg>"
    assert "Icon=" not in (targets.applications / "vmsilo-a_2Db-bad.desktop").read_text()


def test_dropped_keys_are_reported_and_the_entry_kept(tmp_path: Path) -> None:
    """Issue 15, item 5: translations with the spec's locales are kept, bad keys reported."""
    text = GOOD["text"] + "Name[es_419]=Terminal\nName[x-test]=xxXTermxx\nName[de DE]=bad\n"
    targets = Targets.for_home(tmp_path)
    report = install({"work": [{**GOOD, "text": text},
                               {"file": "x.desktop.bak", "text": GOOD["text"]}]}, targets)
    written = (targets.applications / "vmsilo-work-xterm.desktop").read_text().splitlines()
    assert "Name[es_419]=[work] Terminal" in written
    assert "Name[x-test]=[work] xxXTermxx" in written
    assert report.dropped == ["work: xterm.desktop: 'Name[de DE]': not a key=value line with "
                              "a valid key (and locale)"]
    assert report.rejected == ["work: x.desktop.bak: the file name 'x.desktop.bak' does not "
                               "end in .desktop"]
    console = Console(record=True, width=200)
    print_report(console, tmp_path, report, {"work": [GOOD, GOOD]})
    out = console.export_text()
    assert "dropped: work: xterm.desktop: 'Name[de DE]'" in out
    assert "left out: work: x.desktop.bak" in out
    assert "│ work │ 1            │ 1        │ 1            │" in out


def test_an_injected_exec_line_never_reaches_the_host_file(tmp_path: Path) -> None:
    """Issue 15, item 1, through install: one Exec line, the newline kept escaped."""
    text = GOOD["text"].replace("Exec=xterm", 'Exec=a "\\nExec=touch /tmp/x\\nX="')
    targets = Targets.for_home(tmp_path)
    install({"work": [{**GOOD, "text": text}]}, targets)
    lines = (targets.applications / "vmsilo-work-xterm.desktop").read_text().split("\n")
    assert [line for line in lines if line.startswith("Exec")] == [
        'Exec=vm-run work -- a "\\nExec=touch /tmp/x\\nX="']


def test_guest_file_names_and_text_are_shown_cleaned_and_never_crash(tmp_path: Path) -> None:
    targets = Targets.for_home(tmp_path)
    escape = {**GOOD, "file": "a\x1b[2J\nb.desktop", "text": GOOD["text"] + "Name[x y]=z\n"}
    surrogate = {**GOOD, "file": "s\ud800.desktop"}
    broken = {**GOOD, "file": "t.desktop", "text": GOOD["text"] + "Comment=\ud800\n"}
    report = install({"work": [escape, surrogate, broken]}, targets)
    assert report.dropped == ["work: a [2J b.desktop: 'Name[x y]': not a key=value line with a "
                              "valid key (and locale)"]
    assert [r.split(": ")[1] for r in report.rejected] == ["s.desktop", "t.desktop"]
    assert sorted(p.name for p in targets.applications.iterdir()) == [
        "vmsilo-work-a_1B_5B2J_0Ab.desktop"]
