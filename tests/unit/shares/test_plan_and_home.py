"""Which folders a VM shares, the words the guest gets for them, and the shared home's
first-start copy of the template: made by a child running as the desktop user into a
directory root created for it, never over an existing home, never through a link, never in a
directory someone else controls."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vmsilo.config import parse_config, resolve
from vmsilo.errors import UserError
from vmsilo.host.paths import Mode, Paths
from vmsilo.host.safefs import UnsafePath
from vmsilo.protocol.shareparams import GuestShare, GuestShares, ShareParamError, decode
from vmsilo.shares.plan import shares_for
from vmsilo.shares.runner import ensure_home

CONFIG = """
enable = true
user = "nobody"
[vms.a]
sharedDirectories.docs = { path = "/srv/docs", readonly = true }
sharedDirectories.media = { path = "/srv/media", mountPoint = "/media" }
[vms.b]
sharedHome = "/data/b-home"
[vms.c]
sharedHome = false
"""


def test_shares_of_each_kind(tmp_path: Path) -> None:
    resolved = resolve(parse_config(CONFIG))
    paths = Paths.under(tmp_path, Mode.SYSTEM)
    a = shares_for(resolved.vms["a"], paths)
    assert [(s.tag, str(s.source), s.mount_point, s.readonly) for s in a] == [
        ("vmsilo-home", str(tmp_path / "shared" / "a"), "/home/user", False),
        ("docs", "/srv/docs", "/mnt/docs", True),
        ("media", "/srv/media", "/media", False),
    ]
    assert a[1].option_path == "vms.a.sharedDirectories.docs"
    (b_home,) = shares_for(resolved.vms["b"], paths)
    assert str(b_home.source) == "/data/b-home" and b_home.is_home
    assert shares_for(resolved.vms["c"], paths) == []


def test_share_words_round_trip() -> None:
    shares = GuestShares(
        [GuestShare("vmsilo-home", "/home/user", False), GuestShare("docs", "/mnt/docs", True)],
    )
    words = shares.encode()
    assert words == [
        "vmsilo.share=vmsilo-home,/home/user,rw",
        "vmsilo.share=docs,/mnt/docs,ro",
    ]
    assert decode("quiet " + " ".join(words)) == shares
    # The guest's user keeps its ids (the host's id map makes them the desktop user's): an
    # old host's id word is ignored, not obeyed.
    assert decode("vmsilo.uid=0:0 " + " ".join(words)) == shares


@pytest.mark.parametrize(
    "word",
    [
        "vmsilo.share=docs,/mnt/docs",
        "vmsilo.share=d/x,/mnt,rw",
        "vmsilo.share=d,mnt,rw",
        "vmsilo.share=d,/mnt/../etc,rw",
        "vmsilo.share=d,/mnt,rx",
    ],
)
def test_malformed_share_words_are_refused(word: str) -> None:
    with pytest.raises(ShareParamError, match=word.split("=")[0]):
        decode(word)


def _share(tmp_path: Path):  # type: ignore[no-untyped-def]
    config = parse_config('enable = true\nuser = "nobody"\n[vms.a]\n')
    return shares_for(resolve(config).vms["a"], Paths.under(tmp_path, Mode.SYSTEM))[0]


# The copy runs for real as `nobody` (the tests' desktop user), which only root can switch to.
NOBODY = (65534, 65534)


def _owners(tree: Path) -> set[tuple[int, int]]:
    return {(p.lstat().st_uid, p.lstat().st_gid) for p in [tree, *tree.rglob("*")]}


@pytest.mark.allow_subprocess
@pytest.mark.skipif(os.geteuid() != 0, reason="the copy drops root to the desktop user")
def test_a_missing_home_is_copied_from_the_template_once(tmp_path: Path) -> None:
    template = tmp_path / "state" / "home-template"
    template.mkdir(parents=True, mode=0o755)
    (template / ".profile").write_text("from template\n")
    (template / "sub").mkdir()
    (template / "sub" / "f").write_text("x")
    (template / "link").symlink_to("/etc/shadow")  # copied as a link, never followed
    share = _share(tmp_path)
    assert ensure_home(share, template, NOBODY) is True
    home = share.source
    assert (home / ".profile").read_text() == "from template\n"
    assert (home / "sub" / "f").read_text() == "x"
    assert os.readlink(home / "link") == "/etc/shadow"
    assert oct(home.stat().st_mode & 0o777) == "0o700"
    assert _owners(home) == {NOBODY}  # every file made by the user, none chowned by root
    assert _owners(template) == {(0, 0)}  # the template stays root's
    parent = home.parent.stat()
    assert (parent.st_uid, oct(parent.st_mode & 0o777)) == (0, "0o755")
    assert not (home.parent / ".a.vmsilo-new").exists()
    (home / ".profile").write_text("mine\n")
    (template / ".new").write_text("later\n")
    assert ensure_home(share, template, NOBODY) is False  # never overwritten
    assert (home / ".profile").read_text() == "mine\n"
    assert not (home / ".new").exists()


@pytest.mark.allow_subprocess
@pytest.mark.skipif(os.geteuid() != 0, reason="the copy drops root to the desktop user")
def test_an_empty_root_owned_template_is_created_when_missing(tmp_path: Path) -> None:
    template = tmp_path / "state" / "home-template"
    share = _share(tmp_path)
    assert ensure_home(share, template, NOBODY) is True
    assert template.is_dir() and list(template.iterdir()) == []
    st = template.stat()
    assert (st.st_uid, st.st_gid, oct(st.st_mode & 0o777)) == (0, 0, "0o755")
    assert share.source.is_dir() and share.source.stat().st_uid == NOBODY[0]


@pytest.mark.allow_subprocess
@pytest.mark.skipif(os.geteuid() != 0, reason="the copy drops root to the desktop user")
def test_the_copy_has_only_the_users_rights(tmp_path: Path) -> None:
    """A template file the user may not read stops the copy (the kernel checked it): no
    home, no staging directory left."""
    template = tmp_path / "state" / "home-template"
    template.mkdir(parents=True, mode=0o755)
    secret = template / "secret"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    share = _share(tmp_path)
    with pytest.raises(UserError, match=r"vms\.a\.sharedHome: the home template could not be "
                                        r"copied as uid 65534 \(.*Permission denied"):
        ensure_home(share, template, NOBODY)
    assert not share.source.exists()
    assert list(share.source.parent.iterdir()) == []


@pytest.mark.allow_subprocess
@pytest.mark.skipif(os.geteuid() != 0, reason="the copy drops root to the desktop user")
def test_a_crashed_copy_is_redone(tmp_path: Path) -> None:
    share = _share(tmp_path)
    staging = share.source.parent / ".a.vmsilo-new"
    staging.mkdir(parents=True)
    (staging / "half").write_text("left by a crash")
    assert ensure_home(share, tmp_path / "state" / "home-template", NOBODY) is True
    assert not staging.exists() and list(share.source.iterdir()) == []


def test_a_home_path_that_is_a_file_is_an_error(tmp_path: Path) -> None:
    share = _share(tmp_path)
    share.source.parent.mkdir(parents=True)
    share.source.write_text("not a dir")
    with pytest.raises(UserError, match=r"vms\.a\.sharedHome: .* is not a directory"):
        ensure_home(share, tmp_path / "template", (os.getuid(), os.getgid()))


def test_a_home_path_that_is_a_link_is_refused(tmp_path: Path) -> None:
    share = _share(tmp_path)
    share.source.parent.mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    share.source.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UserError, match=r"vms\.a\.sharedHome: .* is a symbolic link"):
        ensure_home(share, tmp_path / "state" / "home-template", NOBODY)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs a foreign owner")
def test_a_template_or_shared_root_someone_else_controls_is_refused(tmp_path: Path) -> None:
    share = _share(tmp_path)
    template = tmp_path / "state" / "home-template"
    template.mkdir(parents=True)
    os.chown(template, *NOBODY)
    with pytest.raises(UnsafePath, match="belongs to uid 65534"):
        ensure_home(share, template, NOBODY)
    os.chown(template, 0, 0)
    template.rmdir()
    template.symlink_to(tmp_path)
    with pytest.raises(UnsafePath, match="symbolic link"):
        ensure_home(share, template, NOBODY)
    template.unlink()
    shared_root = share.source.parent
    shared_root.mkdir()
    os.chown(shared_root, *NOBODY)
    with pytest.raises(UserError, match=r"vms\.a\.sharedHome: .* root's alone"):
        ensure_home(share, template, NOBODY)
    assert list(shared_root.iterdir()) == []


def test_shares_are_refused_when_the_desktop_user_is_root(tmp_path: Path) -> None:
    from vmsilo.shares.service import ShareService

    config = parse_config('enable = true\nuser = "root"\n[vms.a]\n')
    service = ShareService(Paths.under(tmp_path, Mode.SYSTEM), "root")
    with pytest.raises(UserError, match=r"VM a shares folders, and the guest's user would be "
                                        r"host root .* set user to the desktop account"):
        service.check(resolve(config).vms["a"])


@pytest.mark.skipif(os.geteuid() != 0, reason="gives a root-owned directory another group")
def test_the_shared_root_is_roots_of_the_users_group_and_closed_to_others(
    tmp_path: Path,
) -> None:
    from vmsilo.shares.runner import secure_shared_root

    shared_root = tmp_path / "shared"
    secure_shared_root(shared_root, NOBODY[1])  # created
    st = shared_root.stat()
    assert (st.st_uid, st.st_gid, oct(st.st_mode & 0o7777)) == (0, NOBODY[1], "0o750")
    shared_root.chmod(0o755)  # as an older vmsilo made it
    os.chown(shared_root, 0, 0)
    secure_shared_root(shared_root, NOBODY[1])
    st = shared_root.stat()
    assert (st.st_uid, st.st_gid, oct(st.st_mode & 0o7777)) == (0, NOBODY[1], "0o750")
    os.chown(shared_root, NOBODY[0], NOBODY[1])
    with pytest.raises(UnsafePath, match="belongs to uid 65534"):
        secure_shared_root(shared_root, NOBODY[1])
    shared_root.rmdir()
    shared_root.symlink_to(tmp_path)
    with pytest.raises(UnsafePath, match="symbolic link"):
        secure_shared_root(shared_root, NOBODY[1])
    assert tmp_path.stat().st_gid == 0  # the link's target was left alone
