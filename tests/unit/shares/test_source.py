"""A share's directory opened once without following links (``vmsilo.shares.source``), what
virtiofsd's ids may read of it, and the check that no share lies inside another (config)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from vmsilo.config import ConfigError, parse_config
from vmsilo.errors import UserError
from vmsilo.host.ids import guest_id_map
from vmsilo.shares.runner import IdMaps, unreadable
from vmsilo.shares.source import exposed, open_source

OPTION = "vms.t.sharedDirectories.docs"


def test_the_directory_itself_is_opened_and_every_component_recorded(tmp_path: Path) -> None:
    docs = tmp_path / "a" / "docs"
    docs.mkdir(parents=True)
    with open_source(docs, OPTION) as source:
        assert os.path.samestat(os.fstat(source.fd), docs.stat())
        assert os.get_inheritable(source.fd) is False
        assert [str(path) for path, _ in source.chain] == [
            "/", *(str(p) for p in reversed(docs.parents[:-1])), str(docs)]
        assert os.path.samestat(source.stat, docs.stat())
        # The descriptor names the directory even once its path leads elsewhere.
        docs.rename(tmp_path / "a" / "moved")
        docs.mkdir()
        assert os.path.samestat(os.stat(source.proc_path), (tmp_path / "a" / "moved").stat())
    with pytest.raises(OSError):
        os.fstat(source.fd)  # closed


@pytest.mark.parametrize("where", ["on the way", "the share itself"])
def test_a_link_anywhere_is_refused_with_the_option_and_the_fix(tmp_path: Path,
                                                                where: str) -> None:
    real = tmp_path / "real" / "docs"
    real.mkdir(parents=True)
    if where == "on the way":
        (tmp_path / "link").symlink_to(tmp_path / "real")
        path, link, target = tmp_path / "link" / "docs", tmp_path / "link", tmp_path / "real"
        tail = f", on the way to {path}"
    else:
        (tmp_path / "link").symlink_to(real)
        path, link, target, tail = tmp_path / "link", tmp_path / "link", real, ""
    with pytest.raises(UserError) as caught:
        open_source(path, OPTION)
    assert str(caught.value) == (
        f"{OPTION}: {link} is a symbolic link (to '{target}'){tail}; vmsilo follows no link on "
        "the way to a share, because whoever can write a folder on the way (you, or a guest "
        "sharing it) could point the link elsewhere: replace the link by the real directory, "
        "or set the path to the directory's real location (no link in it)")


def test_missing_non_directory_dotdot_and_relative_paths_are_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    cases = {
        tmp_path / "missing" / "docs": f"{tmp_path / 'missing'} does not exist on the host; "
                                       f"create {tmp_path / 'missing' / 'docs'} or fix the path",
        tmp_path / "file": f"{tmp_path / 'file'} is not a directory on the host; fix the path",
        tmp_path / "file" / "x": f"{tmp_path / 'file'} is not a directory on the host",
        Path(f"{tmp_path}/../docs"): "contains '..'; vmsilo opens a share one folder at a "
                                     "time and never goes back up",
        Path("docs"): "docs is not an absolute path",
    }  # fmt: skip
    for path, message in cases.items():
        with pytest.raises(UserError) as caught:
            open_source(path, OPTION)
        assert str(caught.value).startswith(f"{OPTION}: "), caught.value
        assert message in str(caught.value), (path, caught.value)


def test_only_the_shared_directory_must_be_readable_by_virtiofsds_ids(tmp_path: Path) -> None:
    maps = IdMaps(guest_id_map(7, 12345), guest_id_map(7, 12345))
    docs = tmp_path / "docs"
    docs.mkdir()
    tmp_path.chmod(0o700)  # the folder above: no matter
    for mode, refused in ((0o755, False), (0o705, False), (0o750, True), (0o701, True)):
        docs.chmod(mode)
        with open_source(docs, OPTION) as source:
            # owned by the runner's uid, unmapped (unless a test runs as 12345): mode bits
            assert unreadable(source, maps) is (os.getuid() != 12345 and refused), oct(mode)


def test_exposed_means_every_account_reaches_it_on_a_setuid_file_system(
    tmp_path: Path,
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    with open_source(docs, OPTION) as source:
        all_searchable = all(st.st_mode & stat.S_IXOTH for _, st in source.chain[:-1])
        nosuid = os.statvfs(docs).f_flag & os.ST_NOSUID
        assert exposed(source) is bool(all_searchable and not nosuid)
    tmp_path.chmod(0o700)
    with open_source(docs, OPTION) as source:
        assert exposed(source) is False


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    return caught.value.problems


def test_the_shared_home_is_where_vmsilod_puts_it(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    """``sharedHome = true`` is ``<shared root>/<vm>``; ``VMSILO_ROOT`` moves the root."""
    monkeypatch.setenv("VMSILO_ROOT", str(tmp_path))
    config = f"""
        user = "alice"
        [vms.work]
        [vms.spy]
        sharedHome = false
        sharedDirectories.docs = {{ path = "{tmp_path}/shared/work/docs" }}
        sharedDirectories.other = {{ path = "/shared/work/docs" }}
    """
    (problem,) = _problems(config)
    assert problem.startswith(
        f"vms.spy.sharedDirectories.docs.path: {tmp_path}/shared/work/docs is inside "
        f"{tmp_path}/shared/work, which vms.work.sharedHome shares; ")


def test_shares_side_by_side_or_read_only_twice_are_fine() -> None:
    parse_config("""
        user = "alice"
        [vms.a]
        sharedDirectories.docs = { path = "/srv/docs" }
        sharedDirectories.docs2 = { path = "/srv/docs2" }
        [vms.b]
        sharedDirectories.docs = { path = "/srv/docs", readonly = true }
        sharedDirectories.more = { path = "/srv/more/" }
        [vms.c]
        sharedDirectories.docs = { path = "/srv/docs", readonly = true }
        sharedDirectories.more = { path = "/srv//more", readonly = true }
    """)
