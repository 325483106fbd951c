"""vmsilod started from a directory someone else can write: its root children run Python
modules (``python -m vmsilo.balloon.main``, log pumps, virtiofsd's launcher), which look in
their working directory first. A ``vmsilo`` package planted there must never run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.integration.daemon.test_daemon_process import daemon_env
from vmsilo.daemon import balloond
from vmsilo.host import proc
from vmsilo.host.paths import Mode, Paths

BIN = Path(sys.executable).parent


def test_children_start_in_the_root_directory(tmp_path: Path) -> None:
    child = proc.spawn(["pwd"], stdout=subprocess.PIPE)
    assert child.communicate(timeout=10)[0] == b"/\n"


def test_a_package_planted_in_the_working_directory_never_runs(tmp_path: Path) -> None:
    planted = tmp_path / "writable" / "vmsilo"
    (planted / "balloon").mkdir(parents=True)
    marker = tmp_path / "planted-code-ran"
    bait = f"open({str(marker)!r}, 'w').write('ran')\n"
    for init in (planted / "__init__.py", planted / "balloon" / "__init__.py",
                 planted / "balloon" / "main.py"):
        init.write_text(bait)
    os.chmod(tmp_path / "writable", 0o777)
    env = daemon_env(tmp_path)
    daemon = subprocess.Popen([str(BIN / "vmsilo"), "daemon"], env=env,
                              cwd=tmp_path / "writable", stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
    try:
        status = tmp_path / "root" / "run" / "balloond.json"
        deadline = time.monotonic() + 30
        while not status.exists() and time.monotonic() < deadline:
            assert daemon.poll() is None, daemon.stdout.read() if daemon.stdout else ""
            time.sleep(0.1)
        assert status.exists(), "vmsilo-balloond did not start"
        assert not marker.exists()
        assert os.readlink(f"/proc/{daemon.pid}/cwd") == "/"
    finally:
        daemon.terminate()
        daemon.wait(30)
        balloond.stop(Paths.under(tmp_path / "root", Mode.SYSTEM))
