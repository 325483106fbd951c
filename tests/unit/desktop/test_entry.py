"""Guest desktop entries made safe for the host: whitelisted keys only, Exec rewritten to run in
the VM with the spec's quoting, hostile entries rejected with a reason."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from vmsilo.desktop.entry import EntryRejected, parse, render, split_exec

CALC = b"""[Desktop Entry]
Type=Application
Name=Calculator
Name[de]=Taschenrechner
Comment=Do sums
Keywords=math;sum;
Icon=accessories-calculator
Exec=gnome-calculator %U
TryExec=gnome-calculator
Path=/tmp
StartupWMClass=gnome-calculator
DBusActivatable=true
X-GNOME-UsesNotifications=true
Categories=Utility;Calculator;
MimeType=x-scheme-handler/calculator;
Terminal=false
Actions=shortcuts;

[Desktop Action shortcuts]
Name=Evil
Exec=sh -c 'cat ~/.ssh/id_rsa'
"""


def test_only_whitelisted_keys_survive_and_exec_runs_in_the_vm() -> None:
    text = render(
        parse("org.gnome.Calculator.desktop", CALC), "work", "vmsilo-work-calc", "X-vmsilo-work"
    )
    lines = text.splitlines()
    assert "Name=[work] Calculator" in lines and "Name[de]=[work] Taschenrechner" in lines
    assert "Exec=vm-run work -- gnome-calculator %U" in lines
    assert "Icon=vmsilo-work-calc" in lines
    assert "Categories=Utility;Calculator;X-vmsilo-work;" in lines
    for gone in (
        "TryExec",
        "Path=",
        "StartupWMClass",
        "DBusActivatable",
        "X-GNOME",
        "Actions",
        "Desktop Action",
        "Evil",
        "id_rsa",
    ):
        assert gone not in text, gone


@pytest.mark.parametrize(
    ("exec_line", "argv"),
    [
        ('app "two words" %f %i %c', ["app", "two words"]),
        ('app "quote \\\\" and \\\\$ dollar"', ["app", 'quote " and $ dollar']),
        ("app --percent=100%%", ["app", "--percent=100%"]),
        ("app %u", ["app", "%u"]),
    ],
)
def test_exec_quoting_and_field_codes(exec_line: str, argv: list[str]) -> None:
    data = f"[Desktop Entry]\nType=Application\nName=A\nExec={exec_line}\n".encode()
    assert parse("a.desktop", data).argv == argv


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"Exec=app; rm -rf ~", "reserved character"),
        (b"Exec=app $(id)", "reserved character"),
        (b"Exec=app `id`", "reserved character"),
        (b"Exec=app --file=%f", "inside an argument"),
        (b'Exec=app "unterminated', "unterminated"),
        (b"Exec=app\nName=" + b"x" * 2_000_000, "longer than"),
        (b"Exec=app\nComment=\xff\xfe", "not UTF-8"),
        (b"Exec=app\nNoDisplay=true", "NoDisplay"),
    ],
)
def test_hostile_entries_are_rejected_with_a_reason(body: bytes, reason: str) -> None:
    data = b"[Desktop Entry]\nType=Application\nName=A\n" + body + b"\n"
    with pytest.raises(EntryRejected, match=reason):
        parse("a.desktop", data)


def test_an_icon_path_that_escapes_is_dropped() -> None:
    data = b"[Desktop Entry]\nType=Application\nName=A\nExec=a\nIcon=../../etc/passwd\n"
    assert parse("a.desktop", data).icon is None


def test_arguments_with_reserved_characters_are_quoted_again() -> None:
    entry = parse(
        "a.desktop", b'[Desktop Entry]\nType=Application\nName=A\nExec=app "a b" "x\\\\$y"\n'
    )
    assert split_exec(
        render(entry, "vm", None, "X-vmsilo-vm")
        .split("Exec=")[1]
        .split("\n")[0]
        .replace("\\\\", "\\")
    ) == ["vm-run", "vm", "--", "app", "a b", "x$y"]


@pytest.mark.allow_subprocess
@pytest.mark.skipif(
    shutil.which("desktop-file-validate") is None, reason="desktop-file-validate is not installed"
)
def test_generated_entries_pass_desktop_file_validate(tmp_path: Path) -> None:
    path = tmp_path / "vmsilo-work-org.gnome.Calculator.desktop"
    path.write_text(
        render(
            parse("org.gnome.Calculator.desktop", CALC), "work", "vmsilo-work-calc", "X-vmsilo-work"
        )
    )
    result = subprocess.run(["desktop-file-validate", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
