"""``scripts/bootstrap.sh`` run as a plain user on a machine missing packages (issue 15): it
names every missing package at once, with the one command that installs them, and stops
before doing anything (no virtual environment made). ``VMSILO_BOOTSTRAP_PKG_ROOT`` points
its package probes at an empty directory, so every package counts as missing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="runs the script as nobody (needs root and setpriv)")


def test_a_user_run_names_all_missing_packages_before_doing_anything(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    tmp_path.chmod(0o777)
    script = (REPO / "scripts/bootstrap.sh").read_text()
    block = script.split("declare -A PACKAGES=(", 1)[1].split("\n)", 1)[0]
    packages = sorted(re.findall(r"^\s*\[([a-z0-9.+-]+)\]=", block, re.MULTILINE))
    done = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
         "env", f"VENV={venv}", f"VMSILO_BOOTSTRAP_PKG_ROOT={tmp_path / 'empty'}",
         f"HOME={tmp_path}", "bash", str(REPO / "scripts/bootstrap.sh")],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert lines[0] == ("bootstrap: missing Debian packages: "
                        + " ".join([*packages, "python3-venv"]))
    assert lines[-1] == ("  sudo apt-get install --no-install-recommends "
                         + " ".join([*packages, "python3-venv"]))
    assert "uidmap" in packages
    assert not venv.exists()  # nothing done
    assert not (tmp_path / ".local").exists()  # not even the shell completion
