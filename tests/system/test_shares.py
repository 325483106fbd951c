"""Shared folders with real VMs and the installed virtiofsd: the shared home (created from the
template on first start only, owned by the configured user, surviving restarts while the root
overlay does not), guest root unable to leave root-owned, setuid-root or device files on the
host through any share, setuid files of the desktop user's in a home out of other accounts'
reach (``/shared`` is 0750, the user's group), a read-only share the guest cannot write even
as root, upstream's uidMap/gidMap honoured, two VMs that see only their own shares, and
options that cannot be honoured, or a share path with a link in it, refused up front."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import RunningDaemon
from vmsilo.host.procid import ProcessIdentity
from vmsilo.shares import virtiofsd

NOBODY = 65534
GUEST_USER = 1000  # the guest's `user`: the desktop user on the host

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

[vms.other.sharedDirectories.priv]
path = "{root}/srv/priv"
uidMap = ":0:65534:1:"
gidMap = ":0:65534:1:"

[vms.strict]
memory = 512
cpus = 1
gpu = false
sound.playback = false
sharedHome = false
sharedDirectories.mapped = {{ path = "{root}/srv/mapped", uidMap = ":0:0:1:", cache = "metadata" }}

[vms.linked]
memory = 512
cpus = 1
gpu = false
sound.playback = false
sharedHome = false
sharedDirectories.docs = {{ path = "{root}/srv/link/docs" }}
"""
OTHER_ACCOUNT = 12345  # a local account that is not the desktop user

# What guest root tries, as in the issue: a setuid-root shell and a block device node.
ATTACK = "cd {dir} && cp /bin/sh s && chown 0:0 s && chmod 4755 s; mknod -m 666 disk b 254 0"


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
    (root / "srv" / "link").symlink_to(root / "srv")  # so srv/link/docs is srv/docs
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
    code, out = run(shares, "homey", "cat ~/.welcome; id -u; stat -c %u:%g ~; echo hello > ~/note")
    assert code == 0, out + shares.log()
    # The guest's user keeps its ids and sees the home as its own.
    assert out.splitlines()[:3] == ["from the template", str(GUEST_USER), "1000:1000"]
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


def _host_files(tree: Path) -> list[tuple[Path, os.stat_result]]:
    return [(path, path.lstat()) for path in [tree, *tree.rglob("*")]]


@pytest.mark.parametrize("where", ["/home/user", "/mnt/docs"])
def test_guest_root_leaves_no_root_setuid_root_or_device_file_on_the_host(
    shares: RunningDaemon, where: str
) -> None:
    host = {"/home/user": shares.root / "shared" / "homey",
            "/mnt/docs": shares.root / "srv" / "docs"}[where]  # fmt: skip
    code, out = run(shares, "homey", ATTACK.format(dir=where), user="root")
    assert code != 0 and "mknod" in out, out  # the device node is refused outright
    code, out = run(shares, "homey", f"stat -c '%u %a %F' {where}/s; touch {where}/users-file")
    assert code == 0 and out.splitlines()[0] == "0 4755 regular file", out  # in the guest...
    block = 0x50000000 + 3 * 0x10000  # ...but on the host: VM id 3's own unprivileged id
    setuid = (host / "s").stat()
    assert (setuid.st_uid, setuid.st_gid) == (block, block)
    assert not (host / "disk").exists()
    users = (host / "users-file").stat()
    assert (users.st_uid, users.st_gid) == (NOBODY, NOBODY)
    for path, st in _host_files(host):
        assert st.st_uid != 0 and st.st_gid != 0, path
        assert not stat.S_ISBLK(st.st_mode) and not stat.S_ISCHR(st.st_mode), path
        if st.st_mode & stat.S_ISUID:
            assert st.st_uid == block, path


def test_setuid_files_of_the_user_made_by_a_guest_are_out_of_other_accounts_reach(
    shares: RunningDaemon,
) -> None:
    """The guest's user is the desktop user on the host, so it may chmod u+s its own files,
    and open its home to everyone: /shared (root's, the user's group, 0750) keeps every other
    local account out all the same."""
    code, out = run(shares, "homey", "cp /bin/sh ~/mine && chmod 4755 ~/mine && chmod 755 ~")
    assert code == 0, out
    home = shares.root / "shared" / "homey"
    mine = (home / "mine").stat()
    assert (mine.st_uid, mine.st_mode & stat.S_ISUID) == (NOBODY, stat.S_ISUID)
    shared = (shares.root / "shared").stat()
    assert (shared.st_uid, shared.st_gid, stat.S_IMODE(shared.st_mode)) == (0, NOBODY, 0o750)
    # Another account runs it: the kernel checks the path as that account (setpriv itself
    # would exec with root's capabilities still in effect, so Python drops them first).
    with pytest.raises(PermissionError):
        as_other_account([str(home / "mine"), "-p", "-c", "id -u"])
    listing = as_other_account(["ls", str(home)])
    assert listing.returncode != 0 and "Permission denied" in listing.stderr, listing
    assert stat.S_IMODE(home.stat().st_mode) == 0o755  # the guest did open its home


def as_other_account(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """``argv`` as another local account. The path is checked as that account: Python drops
    root's capabilities before the exec (``setpriv --reuid`` would still hold them then)."""
    return subprocess.run(argv, user=OTHER_ACCOUNT, group=OTHER_ACCOUNT, extra_groups=[],
                          capture_output=True, text=True, timeout=30, check=False)  # fmt: skip


def test_a_uid_map_from_upstream_is_honoured(shares: RunningDaemon) -> None:
    code, out = run(shares, "other", "touch /mnt/priv/by-root; chown 0:0 /mnt/priv/by-root",
                    user="root")  # fmt: skip
    assert code == 0, out
    made = (shares.root / "srv" / "priv" / "by-root").stat()
    assert (made.st_uid, made.st_gid) == (NOBODY, NOBODY)  # uidMap = ":0:65534:1:"


def test_a_restarted_vmsilod_adopts_the_running_virtiofsd_and_stops_it(
    shares: RunningDaemon,
) -> None:
    code, out = run(shares, "homey", "echo before > ~/adopted")
    assert code == 0, out
    runtime = shares.root / "run" / "homey"
    records = {p.parent.name: json.loads(p.read_text())
               for p in runtime.glob("virtiofs-*/virtiofsd.json")}  # fmt: skip
    assert sorted(records) == ["virtiofs-docs", "virtiofs-papers", "virtiofs-vmsilo-home"]
    for name, record in records.items():
        st = (runtime / name / "virtiofsd.json").stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)
        assert ProcessIdentity.from_json(record).alive()
    shares.restart_daemon_only()
    code, out = run(shares, "homey", "cat ~/adopted; echo after >> ~/adopted")
    assert (code, out) == (0, "before"), out + shares.log()
    assert shares.cli("vm-stop", "homey").returncode == 0
    assert not any(ProcessIdentity.from_json(r).alive() for r in records.values())
    assert not runtime.exists()
    assert (shares.root / "shared" / "homey" / "adopted").read_text() == "before\nafter\n"


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


def test_options_that_cannot_be_honoured_are_refused_before_anything_starts(
    shares: RunningDaemon,
) -> None:
    found = virtiofsd.find()
    assert found is not None
    result = shares.cli("vm-start", "strict")
    assert result.returncode == 1
    message = result.stderr.decode()
    # Whatever the flavour: a map that would give the guest host root.
    assert "vms.strict.sharedDirectories.mapped.uidMap = ':0:0:1:': host id 0 is root" in message
    if found.flavour == "qemu":
        assert "vms.strict.sharedDirectories.mapped.cache" in message, message
        assert "install the Rust virtiofsd" in message
    assert not (shares.root / "run" / "strict").exists()  # nothing was set up
    assert shares.status()["strict"]["state"] == "failed"


def test_a_share_path_with_a_link_in_it_is_refused_before_anything_starts(
    shares: RunningDaemon,
) -> None:
    result = shares.cli("vm-start", "linked")
    assert result.returncode == 1
    message = result.stderr.decode()
    link = shares.root / "srv" / "link"
    assert (f"vms.linked.sharedDirectories.docs: {link} is a symbolic link (to "
            f"'{shares.root / 'srv'}'), on the way to {link / 'docs'}; vmsilo follows no "
            "link on the way to a share") in message, message
    assert not (shares.root / "run" / "linked").exists()
