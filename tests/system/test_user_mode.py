"""User mode: vmsilod and the commands run by an unprivileged user, VMs under that user's
own directories, no root anywhere. Runs as `nobody` with Debian's python3 and this checkout's
code and dependencies on PYTHONPATH (the suite's own interpreter may live where `nobody`
cannot read)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import HELPER_ENV, SYSTEM_PYTHON
from tests.support.images import image_paths

pytestmark = pytest.mark.timeout(600)

NOBODY = 65534
CONFIG = """
enable = true
user = "nobody"

[vms.demo]
memory = 768
cpus = 1
sharedHome = false
gpu = false
sound.playback = false

[vms.wired]
sharedHome = false
gpu = false
sound.playback = false
network.interfaces.wan = { tap.hostAddress = "10.9.0.1/24", addresses = ["10.9.0.2/24"] }
"""


class UserSession:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.config = home / "vmsilo.toml"
        self.config.write_text(CONFIG)
        self.env = {
            "HOME": str(home),
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            **HELPER_ENV,
            "VMSILO_CONFIG": str(self.config),
            "VMSILO_IMAGE_DIR": str(image_paths().image_dir),
            "XDG_RUNTIME_DIR": str(home / "runtime"),
        }
        (home / "runtime").mkdir(mode=0o700)
        for path in (home, home / "runtime", self.config):
            os.chown(path, NOBODY, NOBODY)

    def run(self, module: str, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([str(SYSTEM_PYTHON), "-m", module, *args], env=self.env,
                              capture_output=True, timeout=300, check=False, user=NOBODY,
                              group=NOBODY, extra_groups=[])


@pytest.fixture
def session(test_image: None) -> Iterator[UserSession]:
    if not SYSTEM_PYTHON.exists() or sys.version_info[:2] != (3, 11):
        pytest.skip("needs Debian's python3 of the suite's Python version")
    home = Path(tempfile.mkdtemp(prefix="vmsilo-user-", dir="/var/tmp"))
    home.chmod(0o755)
    user = UserSession(home)
    daemon = subprocess.Popen(
        [str(SYSTEM_PYTHON), "-m", "vmsilo.cli.main", "daemon"], env=user.env,
        stdout=open(home / "daemon.log", "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
        user=NOBODY, group=NOBODY, extra_groups=[],
    )
    try:
        for _ in range(150):
            if user.run("vmsilo.cli.main", "status").returncode == 0:
                break
            assert daemon.poll() is None, (home / "daemon.log").read_text()
            time.sleep(0.2)
        yield user
    finally:
        user.run("vmsilo.cli.vm_stop", "--all")
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
        shutil.rmtree(home, ignore_errors=True)


def test_an_unprivileged_user_runs_a_vm_in_their_own_directories(session: UserSession) -> None:
    result = session.run("vmsilo.cli.vm_run", "demo", "--", "uname", "-n")
    assert result.returncode == 0, result.stderr + (session.home / "daemon.log").read_bytes()
    assert result.stdout == b"demo\n"
    runtime = session.home / "runtime" / "vmsilo" / "demo"
    pid = json.loads((runtime / "processes.json").read_text())["vmm"]["pid"]
    assert os.stat(f"/proc/{pid}").st_uid == NOBODY  # the VMM runs as the user...
    assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")  # ...jailed
    assert "NoNewPrivs:\t1" in Path(f"/proc/{pid}/status").read_text()
    assert (session.home / "runtime" / "vmsilo" / "control.socket").exists()
    overlay = session.home / ".local/share/vmsilo/demo/overlay.raw"
    assert overlay.exists() and overlay.stat().st_uid == NOBODY
    assert b"(user mode)" in (session.home / "daemon.log").read_bytes()


def test_vms_that_need_root_are_refused_with_the_reason(session: UserSession) -> None:
    result = session.run("vmsilo.cli.vm_start", "wired")
    assert result.returncode == 1
    message = result.stderr.decode()
    assert "VM wired needs root for its network interface 'wan'" in message
    assert "run vmsilod as root" in message


def test_a_run_directory_someone_else_made_first_is_refused(test_image: None) -> None:
    """Without XDG_RUNTIME_DIR the run directory is /tmp/vmsilo-<uid>, which any local user
    could create first (and then own the control socket): vmsilod refuses it, saying why."""
    if not SYSTEM_PYTHON.exists() or sys.version_info[:2] != (3, 11):
        pytest.skip("needs Debian's python3 of the suite's Python version")
    planted = Path(f"/tmp/vmsilo-{NOBODY}")
    if planted.exists() or planted.is_symlink():
        pytest.skip(f"{planted} exists already")
    home = Path(tempfile.mkdtemp(prefix="vmsilo-user-", dir="/var/tmp"))
    home.chmod(0o755)
    planted.mkdir(mode=0o777)
    os.chown(planted, 1, 1)  # another user ("daemon") made it first
    try:
        user = UserSession(home)
        del user.env["XDG_RUNTIME_DIR"]
        result = subprocess.run(
            [str(SYSTEM_PYTHON), "-m", "vmsilo.cli.main", "daemon"], env=user.env,
            capture_output=True, timeout=60, check=False, user=NOBODY, group=NOBODY,
            extra_groups=[])
        message = result.stderr.decode()
        assert result.returncode == 1, message
        assert f"{planted} belongs to uid 1, not to uid {NOBODY} or root" in message
        assert "remove it" in message
        assert os.listdir(planted) == []  # nothing was made in it
    finally:
        shutil.rmtree(planted, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
