"""An unprivileged user who plants links where root might write, and root-owned canaries that
must come out of it untouched."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import stat
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path


def as_user(uid: int, gid: int, action: Callable[[], None]) -> None:
    """Run ``action`` in a forked child that dropped to ``uid``/``gid`` (no groups): what the
    user could do themselves."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            action()
        except BaseException:
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the user's action failed"


def plant_link(uid: int, gid: int, link: Path, target: Path) -> None:
    """As the user: make ``link``'s parents and ``link`` -> ``target``."""

    def plant() -> None:
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)

    as_user(uid, gid, plant)


@dataclass
class Canaries:
    """Root-owned files and directories below ``root``: ``passwd-copy``, ``somedir/`` (empty),
    ``etc-like/hosts``."""

    root: Path

    @classmethod
    def make(cls, root: Path) -> Canaries:
        root.mkdir(mode=0o755)
        (root / "passwd-copy").write_text("root:x:0:0:root:/root:/bin/bash\n")
        (root / "somedir").mkdir()
        (root / "etc-like").mkdir()
        (root / "etc-like" / "hosts").write_text("127.0.0.1 localhost\n")
        return cls(root)

    def snapshot(self) -> dict[str, tuple[int, int, int, bytes | tuple[str, ...]]]:
        """Owner, group, mode and content (a directory's: its names) of every canary."""
        shot = {}
        for path in [self.root, *sorted(self.root.rglob("*"))]:
            st = path.lstat()
            content: bytes | tuple[str, ...] = (
                tuple(sorted(p.name for p in path.iterdir())) if path.is_dir()
                else path.read_bytes())
            shot[str(path)] = (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), content)
        return shot


def root_owned(tree: Path) -> list[Path]:
    return [p for p in [tree, *tree.rglob("*")] if p.lstat().st_uid == 0]


@contextlib.contextmanager
def throwaway_user(home: Path) -> Iterator[pwd.struct_passwd]:
    """A new local user whose home is ``home`` (created, theirs, 0700), removed after."""
    if shutil.which("useradd") is None:
        import pytest

        pytest.skip("useradd is needed")
    name = f"vmsilo-t{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--no-create-home", "--home-dir", str(home), "--shell",
                    "/usr/sbin/nologin", "--user-group", name], check=True,
                   capture_output=True)
    try:
        entry = pwd.getpwnam(name)
        home.mkdir(mode=0o700)
        os.chown(home, entry.pw_uid, entry.pw_gid)
        yield entry
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)
