"""Shared folders with real VMs and the installed virtiofsd: the shared home (created from the
template on first start only, owned by the configured user, surviving restarts while the root
overlay does not), a read-only share the guest cannot write even as root, two VMs that see
only their own shares, and an option the installed virtiofsd lacks refused up front."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.daemon import RunningDaemon
from vmsilo.shares import virtiofsd

NOBODY = 65534

CONFIG = """
enable = true
user = "nobody"

[vms.homey]
memory = 768
cpus = 1
gpu = false
sound.playback = false
sharedDirectories.docs = {{ path = "{root}/srv/docs" }}

[vms.homey.sharedDirectories.papers]
path = "{root}/srv/papers"
readonly = true
mountPoint = "/srv/papers"

[vms.other]
memory = 512
cpus = 1
gpu = false
sound.playback = false
sharedHome = false
rootOverlay.type = "tmpfs"
sharedDirectories.priv = {{ path = "{root}/srv/priv" }}

[vms.strict]
memory = 512
cpus = 1
gpu = false
sound.playback = false
sharedHome = false
sharedDirectories.mapped = {{ path = "{root}/srv/priv", uidMap = ":0:1000:1:" }}
"""


@pytest.fixture(scope="module")
def shares(test_image: None) -> Iterator[RunningDaemon]:
    found = virtiofsd.find()
    if found is None:
        pytest.skip("no virtiofsd installed")
    daemon = RunningDaemon("")
    root = daemon.root
    for name in ("docs", "papers", "priv"):
        (root / "srv" / name).mkdir(parents=True)
        os.chown(root / "srv" / name, NOBODY, NOBODY)
    (root / "srv" / "papers" / "paper.txt").write_text("read me\n")
    template = root / "state" / "home-template"
    template.mkdir(parents=True)
    (template / ".welcome").write_text("from the template\n")
    daemon.config_path.write_text(CONFIG.format(root=root))
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


def run(daemon: RunningDaemon, vm: str, script: str, user: str = "user") -> tuple[int, str]:
    result = daemon.cli("vm-run", "-u", user, vm, "sh", "-c", script, timeout=200)
    return result.returncode, (result.stdout + result.stderr).decode().strip()


def test_the_home_is_created_from_the_template_and_owned_by_the_user(
    shares: RunningDaemon,
) -> None:
    home = shares.root / "shared" / "homey"
    assert not home.exists()
    code, out = run(shares, "homey", "cat ~/.welcome; id -u; echo hello > ~/note")
    assert code == 0, out + shares.log()
    assert out.splitlines()[:2] == ["from the template", str(NOBODY)]
    assert (home / ".welcome").read_text() == "from the template\n"
    note = home / "note"
    assert note.read_text() == "hello\n"
    assert (note.stat().st_uid, note.stat().st_gid) == (NOBODY, NOBODY)
    assert home.stat().st_uid == NOBODY


def test_the_home_survives_a_restart_and_the_root_does_not(shares: RunningDaemon) -> None:
    code, out = run(shares, "homey", "echo kept > ~/kept; echo gone > /var/tmp/gone")
    assert code == 0, out
    assert shares.cli("vm-stop", "homey").returncode == 0
    template = shares.root / "state" / "home-template"
    (template / ".later").write_text("added after the first start\n")
    code, out = run(shares, "homey", "cat ~/kept; ls ~/.later /var/tmp/gone 2>&1; true")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == "kept"
    assert any(".later" in line and "No such file" in line for line in lines), out
    assert any("/var/tmp/gone" in line and "No such file" in line for line in lines), out


def test_a_readonly_share_refuses_writes_even_from_root(shares: RunningDaemon) -> None:
    code, out = run(shares, "homey", "cat /srv/papers/paper.txt; echo x > /srv/papers/new")
    assert code != 0 and out.startswith("read me"), out
    assert "Read-only file system" in out, out
    script = "mount -o remount,rw /srv/papers && echo x > /srv/papers/new"
    code, out = run(shares, "homey", script, user="root")
    assert code != 0, out  # the host's read-only bind holds whatever the guest does
    assert not (shares.root / "srv" / "papers" / "new").exists()


def test_two_vms_see_only_their_own_shares(shares: RunningDaemon) -> None:
    code, out = run(shares, "homey", "echo mine > /mnt/docs/secret")
    assert code == 0, out
    code, out = run(shares, "other", "grep virtiofs /proc/mounts; ls -A /mnt")
    assert code == 0, out
    assert out.splitlines() == ["priv /mnt/priv virtiofs rw,relatime 0 0", "priv"], out
    code, out = run(shares, "homey", "grep virtiofs /proc/mounts | cut -d' ' -f1 | sort")
    assert out.splitlines() == ["docs", "papers", "vmsilo-home"], out
    assert not (shares.root / "srv" / "priv" / "secret").exists()


def test_an_option_the_installed_virtiofsd_lacks_is_refused_before_anything_starts(
    shares: RunningDaemon,
) -> None:
    found = virtiofsd.find()
    assert found is not None
    if found.flavour == "rust":
        pytest.skip("the Rust virtiofsd honours every option")
    result = shares.cli("vm-start", "strict")
    assert result.returncode == 1
    message = result.stderr.decode()
    assert "vms.strict.sharedDirectories.mapped.uidMap" in message, message
    assert "install the Rust virtiofsd" in message
    assert not (shares.root / "run" / "strict").exists()  # nothing was set up
    assert shares.status()["strict"]["state"] == "failed"
