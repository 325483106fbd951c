"""What the builder puts into an image: init script generation, configure script, files,
the mmdebstrap command, build failure explanations, the host tool check."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vmsilo.errors import UserError
from vmsilo.image import build, guest, initramfs
from vmsilo.image.imageroot import ImageRoot
from vmsilo.image.pack import desktop_entries, erofs_command, installed_packages
from vmsilo.image.spec import GuestFile, ImageSpec


def test_init_script_gets_the_module_list_and_reads_the_documented_keys() -> None:
    script = initramfs.init_script(["kernel/a.ko", "?kernel/b.ko"])
    assert 'MODULES="kernel/a.ko ?kernel/b.ko"' in script
    assert "@MODULES@" not in script
    for key in ("vmsilo.name=", "vmsilo.overlay=", "vmsilo.overlay_size=", "vmsilo.init="):
        assert key in script
    assert "vmsilo.debug)" in script
    assert "find_disk vmsilo-root" in script and "find_disk vmsilo-overlay" in script
    assert "exec switch_root /newroot" in script
    assert script.startswith("#!/bin/busybox sh\n")


def test_init_script_refuses_module_paths_the_shell_would_split() -> None:
    with pytest.raises(initramfs.InitramfsError):
        initramfs.init_script(["kernel/a b.ko"])
    with pytest.raises(initramfs.InitramfsError):
        initramfs.init_script(["kernel/$(x).ko"])


@pytest.mark.allow_subprocess
def test_init_script_is_valid_busybox_shell(tmp_path: Path) -> None:
    from vmsilo.host import proc

    script = tmp_path / "init"
    script.write_text(initramfs.init_script(["kernel/a.ko"]))
    proc.run(["busybox", "sh", "-n", str(script)])


def test_static_elf_detection() -> None:
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    header[0x20:0x28] = (64).to_bytes(8, "little")
    header[0x36:0x38] = (56).to_bytes(2, "little")
    header[0x38:0x3A] = (1).to_bytes(2, "little")
    load = bytearray(56)
    load[:4] = (1).to_bytes(4, "little")  # PT_LOAD
    interp = bytearray(56)
    interp[:4] = (3).to_bytes(4, "little")  # PT_INTERP
    assert initramfs.is_static_elf(bytes(header + load))
    assert not initramfs.is_static_elf(bytes(header + interp))
    assert not initramfs.is_static_elf(b"#!/bin/sh\n")


SPEC = ImageSpec(
    packages=("curl",),
    files=(GuestFile("/etc/motd", "hello\n", 0o600),),
    commands=("echo 'it''s' > /etc/x", "false"),
    enable_units=("ssh.service",),
)


def test_configure_script_creates_user_enables_units_runs_commands_in_order() -> None:
    script = guest.configure_script(SPEC)
    assert "useradd --uid 1000 --gid 1000 --home-dir /home/user" in script
    assert "--shell /bin/bash user" in script
    assert "systemctl enable vmsilo-agent.service serial-getty@ttyS0.service" in script
    assert "systemd-networkd-wait-online.service" in script
    assert "systemctl enable ssh.service" in script
    first = script.index("guestConfig command 1")
    second = script.index("guestConfig command 2")
    assert first < second
    assert "sh -ec 'echo '\"'\"'it'\"'\"''\"'\"'s'\"'\"' > /etc/x'" in script


def test_staged_files_hold_agent_unit_autologin_and_user_files_last(tmp_path: Path) -> None:
    root = tmp_path / "vmsilo"
    (root / "agent").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "agent" / "__main__.py").write_text("main()\n")
    files = guest.staged_files(SPEC, root)
    by_path = {f.path: f for f in files}
    unit = by_path["/etc/systemd/system/vmsilo-agent.service"].data.decode()
    assert "ExecStart=/usr/bin/python3 -m vmsilo.agent" in unit
    assert "Restart=always" in unit
    dependencies = [
        line for line in unit.splitlines() if re.match(r"(After|Wants|Requires)=", line)
    ]
    assert not any("network" in line or "graphical" in line for line in dependencies)
    autologin = by_path["/etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf"]
    assert b"--autologin root" in autologin.data
    assert by_path[f"{guest.AGENT_DEST}/agent/__main__.py"].data == b"main()\n"
    assert files[-1].path == "/etc/motd" and files[-1].mode == 0o600


def test_packages_include_the_base_set_and_guest_programs() -> None:
    packages = guest.packages(SPEC)
    for name in ("systemd", "python3", "busybox-static", "linux-image-amd64", "curl"):
        assert name in packages


def test_mmdebstrap_command_shape(tmp_path: Path) -> None:
    command = build.mmdebstrap_command(
        SPEC,
        mode="root",
        stage_dir=tmp_path / "stage",
        out_dir=tmp_path / "out",
        cache_dir=tmp_path / "cache",
        compression="lz4",
        python="/usr/bin/python3",
    )
    assert command[0] == "mmdebstrap"
    assert "--mode=root" in command
    assert command[-3:] == ["bookworm", "/dev/null", "http://deb.debian.org/debian"]
    include = next(c for c in command if c.startswith("--include="))
    assert "curl" in include and "systemd" in include
    hooks = [c for c in command if c.startswith("--customize-hook=")]
    assert hooks[-1].startswith("--customize-hook=/usr/bin/python3 -m vmsilo.image.pack")


@pytest.mark.parametrize(
    ("log", "expected"),
    [
        ("E: Unable to locate package foo-bar\n", "no package named foo-bar in Debian bookworm"),
        ("E: Package 'qux' has no installation candidate\n", "no package named qux"),
        ("Err:1 http://x InRelease\n  Could not connect to 127.0.0.1:9\n", "cannot download"),
        ("tar: ./usr/bin/x: Cannot write: No space left on device\n", "the disk is full"),
        ("vmsilo-build: guestConfig command 2 failed\n", "guestConfig command 2 failed"),
        ("I: a\nE: something odd\nE: mmdebstrap failed\n", "E: something odd"),
    ],
)
def test_failures_are_explained(log: str, expected: str) -> None:
    assert expected in build.explain_failure(log, ImageSpec())


def test_missing_tool_names_the_package(tmp_path: Path) -> None:
    (tmp_path / "mmdebstrap").write_text("#!/bin/sh\n")
    (tmp_path / "mmdebstrap").chmod(0o755)
    with pytest.raises(UserError, match=r"needs mkfs\.erofs.*apt install erofs-utils"):
        build.check_tools(str(tmp_path))
    with pytest.raises(UserError, match=r"newuidmap, newgidmap.*apt install erofs-utils uidmap"):
        build.check_tools(str(tmp_path), unshare=True)


def test_build_with_missing_tool_fails_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vmsilo.host.paths import Mode, Paths

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    paths = Paths.under(tmp_path / "root", Mode.SYSTEM)
    with pytest.raises(UserError, match="mmdebstrap"):
        build.build_image(ImageSpec(), paths)
    assert not (tmp_path / "root").exists()


DPKG_STATUS = """\
Package: bash
Status: install ok installed
Architecture: amd64
Version: 5.2.15-2+b2
Description: shell
 continuation: not a field

Package: removed
Status: deinstall ok config-files
Version: 1

Package: libc6
Status: install ok installed
Multi-Arch: same
Architecture: amd64
Version: 2.36-9
"""


def test_installed_packages_from_dpkg_status() -> None:
    assert installed_packages(DPKG_STATUS) == {"bash": "5.2.15-2+b2", "libc6:amd64": "2.36-9"}


def test_desktop_entries_are_raw_and_capped(tmp_path: Path) -> None:
    apps = tmp_path / "usr/share/applications"
    apps.mkdir(parents=True)
    (apps / "a.desktop").write_text("[Desktop Entry]\nName=A\n")
    (apps / "big.desktop").write_text("x" * (64 * 1024 + 1))
    (apps / "notes.txt").write_text("no")
    with ImageRoot(tmp_path) as image:
        assert desktop_entries(image) == [{"file": "a.desktop",
                                           "text": "[Desktop Entry]\nName=A\n"}]


def test_erofs_command_compression() -> None:
    assert "-zlz4" in erofs_command(Path("/r"), Path("/o"), "lz4")
    assert not any(re.match("-z", a) for a in erofs_command(Path("/r"), Path("/o"), "none"))
