"""The real QEMU reads a value ``hypervisor.qemuopt`` encoded as one value (commas doubled);
the round trip itself is a property test in tests/unit/config/test_grammars.py."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from vmsilo.hypervisor import qemuopt


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs QEMU")
def test_real_qemu_reads_an_encoded_value_whole(tmp_path: Path) -> None:
    """QEMU creates a file chardev's file at start: its name shows how the value was split."""
    name = "a,b,,c,id=other,x"
    proc = subprocess.Popen(
        ["qemu-system-x86_64", "-M", "none", "-display", "none", "-nodefaults",
         "-no-user-config", "-S",
         "-chardev", f"file,id=c,path={qemuopt.value(str(tmp_path / name))}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / name).exists() and proc.poll() is None:
            assert time.monotonic() < deadline, "QEMU did not create the chardev's file"
            time.sleep(0.05)
    finally:
        proc.kill()
        _, stderr = proc.communicate()
    assert sorted(p.name for p in tmp_path.iterdir()) == [name], stderr.decode()
