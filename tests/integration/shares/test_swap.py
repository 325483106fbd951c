"""The attack of issue 14's review, finding 3, at the launcher's level: share B's path runs
through a folder "A" that an attacker can write (VM A's read-write share, or the desktop
user's home), and the attacker replaces a component of the path with a link to a private
folder (a canary) — before B starts, or while B's virtiofsd runs. B is refused, or keeps
serving the original directory: never the canary. The attacker really is another uid
(`nobody`, the tests' desktop user, as virtiofsd maps VM A's guest user); the launcher, the
namespaces and the installed virtiofsd are the real ones."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from vmsilo.config.model import SharedDirectory, Virtiofs
from vmsilo.errors import UserError
from vmsilo.host.ids import guest_id_map
from vmsilo.host.safefs import Dir
from vmsilo.shares import runner, virtiofsd
from vmsilo.shares.plan import Share
from vmsilo.shares.runner import IdMaps, launch_command
from vmsilo.shares.source import open_source
from vmsilo.shares.userns import SOURCE

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attacker is another uid")

NOBODY = 65534
MAPS = IdMaps(uids=guest_id_map(9, NOBODY), gids=guest_id_map(9, NOBODY))
OPTION = "vms.b.sharedDirectories.papers"


@dataclass
class Scene:
    top: Path
    a: Path  # writable by the attacker
    b: Path  # share B's path: <a>/sub/papers
    canary: Path  # <top>/private/papers: what the attacker wants B to serve


@pytest.fixture
def scene() -> Iterator[Scene]:
    top = Path(tempfile.mkdtemp(prefix="vmsilo-swap-", dir="/var/tmp"))
    top.chmod(0o755)
    a = top / "A"
    b = a / "sub" / "papers"
    b.mkdir(parents=True)
    (b / "marker").write_text("B's own papers\n")
    private = top / "private"
    canary = private / "papers"
    canary.mkdir(parents=True)
    (canary / "marker").write_text("CANARY: the user's private files\n")
    for path in (a, a / "sub", b, b / "marker"):
        os.chown(path, NOBODY, NOBODY)
    private.chmod(0o700)  # e.g. a folder of the user's that no share exposes
    try:
        yield Scene(top, a, b, canary)
    finally:
        shutil.rmtree(top)


def as_attacker(script: str, *args: str) -> None:
    subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                    "--", "sh", "-ec", script, "sh", *args], check=True, timeout=30)  # fmt: skip


def swap_component(scene: Scene) -> None:
    """Replace the folder on the way (<a>/sub) by a link, so <a>/sub/papers is the canary."""
    as_attacker('mv "$1/sub" "$1/sub.old" && ln -s "$2" "$1/sub"', str(scene.a),
                str(scene.canary.parent))


def share_b(scene: Scene) -> Share:
    return Share("papers", scene.b, "/mnt/papers", SharedDirectory(path=str(scene.b)), OPTION)


@pytest.fixture
def found() -> virtiofsd.Virtiofsd:
    result = virtiofsd.find()
    if result is None:
        pytest.skip("no virtiofsd installed")
    return result


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Dir]:
    with Dir.secure(tmp_path / "run" / "b") as directory:
        yield directory


def test_a_link_planted_on_the_way_before_the_start_is_refused(
    scene: Scene, found: virtiofsd.Virtiofsd, runtime: Dir, tmp_path: Path
) -> None:
    swap_component(scene)
    assert (scene.b / "marker").read_text().startswith("CANARY")  # the path leads there now
    with pytest.raises(UserError) as caught:
        runner.start(found, share_b(scene), Virtiofs(), MAPS, runtime, None, tmp_path / "l")
    assert str(caught.value) == (
        f"{OPTION}: {scene.a / 'sub'} is a symbolic link (to '{scene.canary.parent}'), on the "
        f"way to {scene.b}; vmsilo follows no link on the way to a share, because whoever can "
        "write a folder on the way (you, or a guest sharing it) could point the link "
        "elsewhere: replace the link by the real directory, or set the path to the "
        "directory's real location (no link in it)")
    assert not (runtime.path / "virtiofs-papers").exists()  # nothing was started


def test_a_link_planted_as_the_share_itself_is_refused(
    scene: Scene, found: virtiofsd.Virtiofsd, runtime: Dir, tmp_path: Path
) -> None:
    as_attacker('mv "$1" "$1.old" && ln -s "$2" "$1"', str(scene.b), str(scene.canary))
    with pytest.raises(UserError, match=rf"^{OPTION}: {scene.b} is a symbolic link \(to "
                                        rf"'{scene.canary}'\); vmsilo follows no link"):
        runner.start(found, share_b(scene), Virtiofs(), MAPS, runtime, None, tmp_path / "l")


def test_a_swap_after_the_path_was_resolved_changes_nothing_the_launcher_mounts(
    scene: Scene,
) -> None:
    """The window between vmsilod's resolution and the launcher's mount: the swap happens
    there (the launcher's shell waits for it), and the mount is still B's directory."""
    share = share_b(scene)
    with open_source(share.source, share.option_path) as source:
        argv = launch_command(share, MAPS, ["/bin/sh", "-c",
                                            'echo ready; read _; cat "$1/marker"', "sh",
                                            SOURCE], source_fd=source.fd)  # fmt: skip
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True,
                                   pass_fds=[source.fd])  # fmt: skip
        swap_component(scene)  # before the launcher even ran, or while it does
    assert process.stdout is not None
    assert process.stdout.readline() == "ready\n"
    out, err = process.communicate("go\n", timeout=60)
    assert process.returncode == 0, err
    assert out == "B's own papers\n"


def test_a_swap_while_virtiofsd_runs_leaves_it_serving_the_original_directory(
    scene: Scene, found: virtiofsd.Virtiofsd, runtime: Dir, tmp_path: Path
) -> None:
    original = scene.b.stat()
    running = runner.start(found, share_b(scene), Virtiofs(), MAPS, runtime, None,
                           tmp_path / "l")  # fmt: skip
    try:
        swap_component(scene)
        assert (scene.b / "marker").read_text().startswith("CANARY")
        # The C virtiofsd sets up its sandbox (a mount namespace whose root is the share)
        # once the VMM connects: only now, after the swap, does it look at its source.
        with runtime.sub("virtiofs-papers", create=False) as directory:
            connection = directory.connect_unix(runner.SOCKET)
        with connection:
            served = _served_root(running.pid)
            assert os.path.samestat(served, original)
            assert not os.path.samestat(served, scene.canary.stat())
            assert running.process is not None and running.process.poll() is None
    finally:
        runner.stop(running)


def _served_root(pid: int, timeout: float = 10.0) -> os.stat_result:
    """The root directory of virtiofsd's sandbox (its child process, once it has one; the
    Rust virtiofsd sandboxes itself in place), i.e. the directory it serves."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        for candidate in [*children, str(pid)]:
            root = os.stat(f"/proc/{candidate}/root")
            if not os.path.samestat(root, os.stat("/")):
                return root
        time.sleep(0.05)
    raise AssertionError(f"virtiofsd {pid} set up no sandbox within {timeout} s")
