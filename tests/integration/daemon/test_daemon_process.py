"""vmsilod as a process: readiness reported to systemd, the shipped unit file, refusing a
second instance, and a clean exit on SIGTERM. No VM is booted here."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
CONFIG = 'enable = true\nuser = "root"\n\n[vms.idle]\nsharedHome = false\ngpu = false\n'


def daemon_env(tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "vmsilo.toml"
    config.write_text(CONFIG)
    return {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "VMSILO_ROOT": str(tmp_path / "root"),
        "VMSILO_CONFIG": str(config),
        "VMSILO_CONTROL_SOCKET": str(tmp_path / "root" / "run" / "control.socket"),
        "VMSILO_ACCEL": "tcg",  # no probe: this test boots nothing
    }


def test_ready_and_stopping_are_reported_to_systemd(tmp_path: Path) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(30)
    env = daemon_env(tmp_path) | {"NOTIFY_SOCKET": str(tmp_path / "notify.sock")}
    daemon = subprocess.Popen([str(BIN / "vmsilo"), "daemon"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert notify.recv(4096) == b"READY=1"
        status = subprocess.run([str(BIN / "vmsilo"), "status"], env=env, capture_output=True,
                                check=False)
        assert status.returncode == 0 and b"idle" in status.stdout
        # vmsilod started vmsilo-balloond, which writes its status every tick.
        balloond_status = tmp_path / "root" / "run" / "balloond.json"
        deadline = time.monotonic() + 30
        while not balloond_status.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        balloond_pid = json.loads(balloond_status.read_text())["pid"]
        balloon = subprocess.run([str(BIN / "vmsilo"), "balloon", "status"], env=env,
                                 capture_output=True, check=False)
        assert balloon.returncode == 0 and b"No running VM has a balloon." in balloon.stdout
        second = subprocess.run([str(BIN / "vmsilo"), "daemon"], env=env, capture_output=True,
                                timeout=30, check=False)
        assert second.returncode == 1
        assert b"vmsilod is already running" in second.stderr
        daemon.send_signal(signal.SIGTERM)
        assert notify.recv(4096) == b"STOPPING=1"
        assert daemon.wait(30) == 0
    finally:
        daemon.kill()
        notify.close()
    assert not (tmp_path / "root" / "run" / "control.socket").exists()
    # No VM ran at vmsilod's end, so it ended for good and balloond went with it (issue 15;
    # a vmsilod that ends with VMs running leaves it balancing them for the next one:
    # tests/integration/balloon/test_balloond_lifetime.py).
    assert not Path(f"/proc/{balloond_pid}").exists()


def test_disabled_config_is_refused_with_the_fix(tmp_path: Path) -> None:
    env = daemon_env(tmp_path)
    Path(env["VMSILO_CONFIG"]).write_text(CONFIG.replace("enable = true", "enable = false"))
    result = subprocess.run([str(BIN / "vmsilo"), "daemon"], env=env, capture_output=True,
                            timeout=30, check=False)
    assert result.returncode == 1
    assert b"enable = false" in result.stderr and b"set enable = true" in result.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_the_shipped_unit_file_is_valid(tmp_path: Path) -> None:
    unit = (ROOT / "contrib/systemd/vmsilod.service").read_text()
    assert "Type=notify" in unit and "KillMode=process" in unit
    local = tmp_path / "vmsilod.service"
    local.write_text(unit.replace("/usr/local/bin/vmsilo", str(BIN / "vmsilo")))
    result = subprocess.run(["systemd-analyze", "verify", str(local)], capture_output=True,
                            check=False)
    assert result.returncode == 0, result.stderr
