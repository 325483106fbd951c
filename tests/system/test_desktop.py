"""A real Debian GUI program's desktop entries, from image build to the host menu: a VM with
``guestPrograms = ["xterm"]`` gets an image whose manifest holds xterm's entries and icon, and
``vmsilo desktop install`` turns them into valid host entries that run xterm in the VM."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.daemon import BIN
from tests.support.images import build_image_for, image_paths

CONFIG = """
enable = true
user = "nobody"

[vms.term]
guestPrograms = ["xterm"]
sharedHome = false
"""


@pytest.mark.skipif(shutil.which("desktop-file-validate") is None,
                    reason="desktop-file-validate is not installed")
def test_xterm_comes_through_with_its_icon(test_image: None, tmp_path: Path) -> None:
    result = build_image_for(CONFIG, "term")
    manifest = json.loads((result.path / "manifest.json").read_text())
    files = {e["file"]: e for e in manifest["desktopEntries"]}
    assert files["debian-xterm.desktop"]["icon"] == "debian-xterm.svg"
    config = tmp_path / "vmsilo.toml"
    config.write_text(CONFIG)
    home = tmp_path / "home"
    run = subprocess.run(
        [str(BIN / "vmsilo"), "desktop", "install", "--config", str(config), "--home", str(home)],
        capture_output=True, text=True, check=False,
        env={"PATH": "/usr/bin:/bin", "VMSILO_IMAGE_DIR": str(image_paths().image_dir),
             "VMSILO_ROOT": str(tmp_path / "root")})
    assert run.returncode == 0, run.stdout + run.stderr
    entry = home / ".local/share/applications/vmsilo-term-debian-xterm.desktop"
    text = entry.read_text()
    assert "Name=[term] XTerm" in text
    assert "Exec=vm-run term -- xterm" in text
    icon = home / ".local/share/vmsilo/icons/vmsilo-term-debian-xterm.svg"
    assert f"Icon={icon}" in text and b"<svg" in icon.read_bytes()
    assert (home / ".config/menus/applications-merged/vmsilo-term.menu").exists()
    validate = subprocess.run(["desktop-file-validate", str(entry)], capture_output=True,
                              text=True, check=False)
    assert validate.returncode == 0, validate.stdout
