"""A real Debian GUI program's desktop entries, from image build to the host menu: a VM with
``guestPrograms = ["xterm"]`` gets an image whose manifest holds xterm's entries and icon, and
``vmsilo desktop install`` turns them into valid host entries that run xterm in the VM.

vmsilod refreshes that menu as root (at start and on reload) into the configured user's home,
where the user may have planted links at every place it writes: the refresh runs as the user,
and no root-owned canary outside the home changes owner, content or existence."""

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.support.attacker import Canaries, as_user, plant_link, root_owned, throwaway_user
from tests.support.daemon import BIN, HELPER_ENV, SYSTEM_PYTHON, RunningDaemon
from tests.support.images import build_image_for, image_paths
from vmsilo.desktop.install import Targets

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


def _menu_refreshes(daemon: RunningDaemon, count: int) -> list[str]:
    for _ in range(300):
        lines = [line for line in daemon.log_path.read_text().splitlines()
                 if "menu refreshed" in line or "menu not refreshed" in line]
        if len(lines) >= count:
            return lines
        time.sleep(0.1)
    raise AssertionError("vmsilod did not refresh the menu:\n" + daemon.log_path.read_text())


def test_vmsilods_refresh_follows_no_link_of_the_user(test_image: None) -> None:
    build_image_for(CONFIG, "term")
    base = Path(tempfile.mkdtemp(prefix="vmsilo-attacker-", dir="/var/tmp"))
    base.chmod(0o755)
    daemon = None
    try:
        with throwaway_user(base / "home") as user:
            uid, gid, home = user.pw_uid, user.pw_gid, Path(user.pw_dir)
            canaries = Canaries.make(base / "canary")
            before = canaries.snapshot()
            targets = Targets.for_home(home)
            icon = targets.icons / "vmsilo-term-debian-xterm.svg"
            entry = targets.applications / "vmsilo-term-debian-xterm.desktop"
            # At vmsilod's start: whole folders are links into root's places.
            plant_link(uid, gid, targets.icons, canaries.root / "somedir")
            plant_link(uid, gid, targets.applications, canaries.root / "etc-like")
            plant_link(uid, gid, targets.menus, canaries.root / "somedir")
            daemon = RunningDaemon(CONFIG.replace('user = "nobody"', f'user = "{user.pw_name}"'))
            # The child that writes as the user cannot reach the suite's interpreter (/root).
            daemon.extra_env.update({"VMSILO_HELPER_PYTHON": str(SYSTEM_PYTHON), **HELPER_ENV})
            daemon.start()
            _menu_refreshes(daemon, 1)
            assert canaries.snapshot() == before
            assert root_owned(home) == []

            # On reload: single files are links to a root-owned file.
            def relink() -> None:
                for folder in (targets.icons, targets.applications, targets.menus):
                    folder.unlink()
                    folder.mkdir()
                icon.symlink_to(canaries.root / "passwd-copy")
                entry.symlink_to(canaries.root / "passwd-copy")
                (targets.menus / "vmsilo-term.menu").symlink_to(canaries.root / "passwd-copy")

            as_user(uid, gid, relink)
            result = daemon.cli("vmsilo", "reload")
            assert result.returncode == 0, result.stderr
            _menu_refreshes(daemon, 2)
            assert canaries.snapshot() == before
            assert root_owned(home) == []

            # Without links the menu is there, the user's own.
            as_user(uid, gid, lambda: icon.unlink())
            assert daemon.cli("vmsilo", "reload").returncode == 0
            assert "menu refreshed" in _menu_refreshes(daemon, 3)[-1]
            assert b"<svg" in icon.read_bytes() and f"Icon={icon}" in entry.read_text()
            assert {p.lstat().st_uid for p in [home, *home.rglob("*")]} == {uid}
            assert canaries.snapshot() == before
    finally:
        if daemon is not None:
            daemon.stop()
        shutil.rmtree(base, ignore_errors=True)
