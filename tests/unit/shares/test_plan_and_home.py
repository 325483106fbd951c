"""Which folders a VM shares, the words the guest gets for them, and the shared home's
first-start copy of the template (never over an existing home)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vmsilo.config import parse_config, resolve
from vmsilo.errors import UserError
from vmsilo.host.paths import Mode, Paths
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
        uid=65534,
        gid=65534,
    )
    words = shares.encode()
    assert words == [
        "vmsilo.share=vmsilo-home,/home/user,rw",
        "vmsilo.share=docs,/mnt/docs,ro",
        "vmsilo.uid=65534:65534",
    ]
    assert decode("quiet " + " ".join(words)) == shares


@pytest.mark.parametrize(
    "word",
    [
        "vmsilo.share=docs,/mnt/docs",
        "vmsilo.share=d/x,/mnt,rw",
        "vmsilo.share=d,mnt,rw",
        "vmsilo.share=d,/mnt/../etc,rw",
        "vmsilo.share=d,/mnt,rx",
        "vmsilo.uid=1000",
        "vmsilo.uid=-1:5",
        "vmsilo.uid=99999999999:1",
    ],
)
def test_malformed_share_words_are_refused(word: str) -> None:
    with pytest.raises(ShareParamError, match=word.split("=")[0]):
        decode(word)


def _share(tmp_path: Path):  # type: ignore[no-untyped-def]
    config = parse_config('enable = true\nuser = "nobody"\n[vms.a]\n')
    return shares_for(resolve(config).vms["a"], Paths.under(tmp_path, Mode.SYSTEM))[0]


def test_a_missing_home_is_copied_from_the_template_once(tmp_path: Path) -> None:
    me = (os.getuid(), os.getgid())
    template = tmp_path / "state" / "home-template"
    template.mkdir(parents=True)
    (template / ".profile").write_text("from template\n")
    (template / "sub").mkdir()
    (template / "sub" / "f").write_text("x")
    share = _share(tmp_path)
    assert ensure_home(share, template, me) is True
    assert (share.source / ".profile").read_text() == "from template\n"
    assert (share.source / "sub" / "f").read_text() == "x"
    assert oct(share.source.stat().st_mode & 0o777) == "0o700"
    (share.source / ".profile").write_text("mine\n")
    (template / ".new").write_text("later\n")
    assert ensure_home(share, template, me) is False  # never overwritten
    assert (share.source / ".profile").read_text() == "mine\n"
    assert not (share.source / ".new").exists()


def test_an_empty_template_is_created_when_missing(tmp_path: Path) -> None:
    template = tmp_path / "state" / "home-template"
    share = _share(tmp_path)
    assert ensure_home(share, template, (os.getuid(), os.getgid())) is True
    assert template.is_dir() and list(template.iterdir()) == []
    assert share.source.is_dir()


def test_a_home_path_that_is_a_file_is_an_error(tmp_path: Path) -> None:
    share = _share(tmp_path)
    share.source.parent.mkdir(parents=True)
    share.source.write_text("not a dir")
    with pytest.raises(UserError, match=r"vms\.a\.sharedHome: .* is not a directory"):
        ensure_home(share, tmp_path / "template", (os.getuid(), os.getgid()))
