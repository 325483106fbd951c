"""The menu refresh run by root writes as the home's user, never as root: a child that dropped
to the user (uid, gid, no groups) does the writing, so links the user planted in their home —
at the menu folders, the icon folder, single entries and icons — lead only where the user may
write anyway. No root-owned canary outside the home changes owner, mode, content or
existence, whatever the outcome of the refresh; nothing in the home ends up root's."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.attacker import Canaries, plant_link, root_owned
from tests.support.daemon import BIN, HELPER_ENV, SYSTEM_PYTHON
from vmsilo.desktop.install import Targets
from vmsilo.desktop.menu import MenuWriteError, write_as

pytestmark = [
    pytest.mark.allow_subprocess,
    pytest.mark.skipif(os.geteuid() != 0, reason="root's refresh is what is tested"),
]

NOBODY = 65534
ENTRY = {"file": "xterm.desktop", "icon": "xterm.svg",
         "text": "[Desktop Entry]\nType=Application\nName=XTerm\nExec=xterm\n"}


@dataclass
class Scene:
    home: Path
    canaries: Canaries  # root's: passwd-copy, somedir/, etc-like/
    icons: Path  # the image's icon directory (root's, world-readable)

    @property
    def canary(self) -> Path:
        return self.canaries.root

    def snapshot(self) -> dict[str, tuple[int, int, int, bytes | tuple[str, ...]]]:
        return self.canaries.snapshot()

    def root_owned_in_home(self) -> list[Path]:
        return root_owned(self.home)


@pytest.fixture
def scene(monkeypatch: pytest.MonkeyPatch) -> Iterator[Scene]:
    # The child runs as `nobody`, who cannot reach the suite's own interpreter under /root.
    monkeypatch.setenv("VMSILO_HELPER_PYTHON", str(SYSTEM_PYTHON))
    for key, value in HELPER_ENV.items():
        monkeypatch.setenv(key, value)
    base = Path(tempfile.mkdtemp(prefix="vmsilo-menu-", dir="/var/tmp"))
    base.chmod(0o755)
    home, canary, icons = base / "home", base / "canary", base / "icons"
    home.mkdir(mode=0o700)
    os.chown(home, NOBODY, NOBODY)
    canaries = Canaries.make(canary)
    icons.mkdir()
    (icons / "xterm.svg").write_text("<svg/>")
    try:
        yield Scene(home, canaries, icons)
    finally:
        shutil.rmtree(base)


def _plant(scene: Scene, layout: str) -> None:
    targets = Targets.for_home(scene.home)
    links = {
        "applications folder": (targets.applications, scene.canary / "etc-like"),
        "icon folder": (targets.icons, scene.canary / "somedir"),
        "menu folder": (targets.menus, scene.canary / "somedir"),
        "directory folder": (targets.directories, scene.canary / "etc-like"),
        "an icon": (targets.icons / "vmsilo-work-xterm.svg", scene.canary / "passwd-copy"),
        "an entry": (targets.applications / "vmsilo-work-xterm.desktop",
                     scene.canary / "passwd-copy"),
        "a menu file": (targets.menus / "vmsilo-work.menu", scene.canary / "passwd-copy"),
        "a stale entry": (targets.applications / "vmsilo-gone-app.desktop",
                          scene.canary / "passwd-copy"),
    }
    link, target = links[layout]
    plant_link(NOBODY, NOBODY, link, target)


LAYOUTS = ["applications folder", "icon folder", "menu folder", "directory folder", "an icon",
           "an entry", "a menu file", "a stale entry"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_links_in_the_home_lead_nowhere_root_owns(scene: Scene, layout: str) -> None:
    _plant(scene, layout)
    before = scene.snapshot()
    try:
        report = write_as((NOBODY, NOBODY), scene.home, {"work": [ENTRY]},
                          {"work": scene.icons})
    except MenuWriteError as exc:  # the user's own links broke their menu: their business
        assert "Permission denied" in str(exc), exc
    else:
        assert all(scene.home in path.parents for path in report.written)
    assert scene.snapshot() == before
    assert scene.root_owned_in_home() == []


def test_the_menu_is_written_as_the_user(scene: Scene) -> None:
    report = write_as((NOBODY, NOBODY), scene.home, {"work": [ENTRY]}, {"work": scene.icons})
    targets = Targets.for_home(scene.home)
    entry = targets.applications / "vmsilo-work-xterm.desktop"
    icon = targets.icons / "vmsilo-work-xterm.svg"
    assert {entry, icon, targets.menus / "vmsilo-work.menu"} <= set(report.written)
    assert f"Icon={icon}" in entry.read_text()
    written = [scene.home, *scene.home.rglob("*")]
    assert {(p.lstat().st_uid, p.lstat().st_gid) for p in written} == {(NOBODY, NOBODY)}


def test_the_child_has_no_groups_and_cannot_write_root_places(scene: Scene) -> None:
    # A home the user cannot write (root's) is reported as a failure, not written by root.
    home = scene.canary / "etc-like"
    with pytest.raises(MenuWriteError, match="Permission denied"):
        write_as((NOBODY, NOBODY), home, {"work": [ENTRY]}, {"work": scene.icons})
    assert sorted(p.name for p in home.iterdir()) == ["hosts"]


def test_desktop_install_as_root_writes_as_the_homes_owner(scene: Scene) -> None:
    _plant(scene, "icon folder")
    before = scene.snapshot()
    config = scene.home.parent / "vmsilo.toml"
    config.write_text('user = "nobody"\n[vms.work]\nsharedHome = false\n')
    run = subprocess.run(
        [str(BIN / "vmsilo"), "desktop", "install", "--config", str(config), "--home",
         str(scene.home)], capture_output=True, text=True, check=False,
        env={"PATH": "/usr/bin:/bin", **HELPER_ENV,
             "VMSILO_HELPER_PYTHON": str(SYSTEM_PYTHON),
             "VMSILO_ROOT": str(scene.home.parent / "root")})
    assert run.returncode == 0, run.stdout + run.stderr
    menu = scene.home / ".config/menus/applications-merged/vmsilo-work.menu"
    assert menu.lstat().st_uid == NOBODY
    assert scene.snapshot() == before
    assert scene.root_owned_in_home() == []
