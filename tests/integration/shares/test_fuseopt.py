"""QEMU's C virtiofsd reads a share path ``shares.fuseopt`` escaped as one ``source=`` value,
commas and backslashes included; the round trip itself is a property test in
tests/unit/config/test_grammars.py."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from vmsilo.shares import fuseopt

C_VIRTIOFSD = "/usr/lib/qemu/virtiofsd"


@pytest.mark.skipif(not os.access(C_VIRTIOFSD, os.X_OK), reason="needs QEMU's C virtiofsd")
@pytest.mark.parametrize("name", ["a,b", "back\\slash,x", "\\101", "cache=none,c"])
def test_real_c_virtiofsd_reads_an_escaped_source_whole(tmp_path: Path, name: str) -> None:
    source = str(tmp_path / "missing" / name)  # it names the path it cannot stat
    result = subprocess.run(
        [C_VIRTIOFSD, f"--socket-path={tmp_path / 'sock'}",
         "-o", f"source={fuseopt.value(source)},cache=auto"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert f'failed to stat source ("{source}")' in result.stderr, result.stderr
