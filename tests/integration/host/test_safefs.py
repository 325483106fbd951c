"""Root working in its own directories: nothing planted by another user is followed, foreign
owners are refused or reclaimed, and root-owned canaries outside never change. Real files, as
root (other owners need chown)."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmsilo.host.safefs import Dir, UnsafePath, remove_tree

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make other owners")

ATTACKER = 1  # "daemon": any uid that is neither root nor us


@pytest.fixture
def base(tmp_path: Path) -> Iterator[Path]:
    tmp_path.chmod(0o755)
    yield tmp_path


@pytest.fixture
def canary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A root-owned file and directory the attacker would like root to write through."""
    where = tmp_path_factory.mktemp("canary")
    (where / "file").write_text("precious\n")
    (where / "dir").mkdir()
    (where / "dir" / "keep").write_text("keep\n")
    yield where
    assert (where / "file").read_text() == "precious\n"
    assert (where / "dir" / "keep").read_text() == "keep\n"
    for path in (where / "file", where / "dir", where / "dir" / "keep"):
        assert path.stat().st_uid == 0
    assert sorted(os.listdir(where / "dir")) == ["keep"]


def test_secure_creates_every_component_with_its_mode(base: Path) -> None:
    with Dir.secure(base / "a" / "b", mode=0o750) as made:
        st = os.fstat(made.fd)
    assert stat.S_IMODE(st.st_mode) == 0o750 and st.st_uid == 0
    assert stat.S_IMODE((base / "a").stat().st_mode) & 0o022 == 0


def test_a_symlink_on_the_way_is_refused_and_nothing_is_made_beyond(base: Path,
                                                                     canary: Path) -> None:
    (base / "run").symlink_to(canary / "dir")
    with pytest.raises(UnsafePath, match="is a symbolic link or not a directory"):
        Dir.secure(base / "run" / "vm")
    assert not (canary / "dir" / "vm").exists()


def test_a_directory_another_user_owns_is_refused_with_the_fix(base: Path) -> None:
    planted = base / "vmsilo-65534"
    planted.mkdir(mode=0o777)
    os.chown(planted, ATTACKER, ATTACKER)
    with pytest.raises(UnsafePath) as caught:
        Dir.secure(planted)
    assert f"{planted} belongs to uid {ATTACKER}, not to uid 0 or root" in str(caught.value)
    assert "remove it" in str(caught.value)


def test_an_ancestor_others_may_write_is_refused_unless_sticky(base: Path) -> None:
    shared = base / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(UnsafePath, match="is writable by others"):
        Dir.secure(shared / "mine")
    shared.chmod(0o1777)  # like /tmp: others cannot replace what root owns inside
    Dir.secure(shared / "mine").close()


def test_files_are_written_and_read_without_following_links(base: Path, canary: Path) -> None:
    with Dir.secure(base / "run") as run:
        os.symlink(canary / "file", base / "run" / "launch.json")
        run.write_atomic("launch.json", "{}")  # replaces the link, not its target
        assert not (base / "run" / "launch.json").is_symlink()
        assert run.read("launch.json") == b"{}"
        os.symlink(canary / "file", base / "run" / "cid")
        with pytest.raises(UnsafePath, match="is a symbolic link"):
            run.read("cid")
        fd = run.create("cid")  # a new file where the link was
        os.close(fd)
        assert not (base / "run" / "cid").is_symlink()
        os.symlink(canary / "file", base / "run" / "vmm.log")
        with pytest.raises(OSError):
            run.open("vmm.log", os.O_WRONLY | os.O_APPEND)


def test_a_file_another_user_wrote_is_not_read_back(base: Path) -> None:
    with Dir.secure(base / "run") as run:
        (base / "run" / "network.json").write_text("{}")
        os.chown(base / "run" / "network.json", ATTACKER, ATTACKER)
        with pytest.raises(UnsafePath, match="not a regular file of uid 0"):
            run.read("network.json")


def test_removal_never_follows_links(base: Path, canary: Path) -> None:
    victim = base / "run" / "vm"
    victim.mkdir(parents=True)
    (victim / "into-canary").symlink_to(canary / "dir")
    (victim / "file-link").symlink_to(canary / "file")
    remove_tree(victim)
    assert not victim.exists()


def test_reclaim_replaces_what_an_older_version_gave_away(base: Path, canary: Path) -> None:
    logs = base / "logs" / "vm"
    logs.mkdir(parents=True)
    os.chown(logs, ATTACKER, ATTACKER)
    (logs / "console.log").symlink_to(canary / "file")
    with Dir.reclaimed(logs, mode=0o750) as reclaimed:
        st = os.fstat(reclaimed.fd)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o750)
        assert reclaimed.names() == []
    (base / "logs" / "other").symlink_to(canary / "dir")
    with Dir.reclaimed(base / "logs" / "other") as other:
        assert other.names() == []


def test_sockets_are_bound_and_reached_through_the_directory(base: Path,
                                                             canary: Path) -> None:
    with Dir.secure(base / "run") as run:
        server = run.listen_unix("vmm.sock")
        client = run.connect_unix("vmm.sock")
        conn, _ = server.accept()
        client.sendall(b"x")
        assert conn.recv(1) == b"x"
        for sock in (server, client, conn):
            sock.close()
        elsewhere = socket.socket(socket.AF_UNIX)
        elsewhere.bind(str(canary / "sock"))
        elsewhere.listen(1)
        (base / "run" / "console.sock").symlink_to(canary / "sock")
        with pytest.raises(UnsafePath, match="is not a socket"):
            run.connect_unix("console.sock")
        elsewhere.close()
        os.unlink(canary / "sock")
