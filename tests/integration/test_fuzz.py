"""The atheris targets in ``fuzz/`` run for a bounded number of iterations on their corpus:
a guest-facing decoder that raises anything but its protocol error fails the suite."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
RUNS = "20000"

pytestmark = pytest.mark.allow_subprocess


@pytest.mark.parametrize(
    ("target", "corpora"),
    [
        ("fuzz_dbusproxy.py", ["dbusproxy"]),
        ("fuzz_wayland.py", ["wayland"]),
        ("fuzz_decoders.py", ["mux", "exec_to_host", "exec_to_guest"]),
        ("fuzz_encoders.py", ["encoders"]),
        ("fuzz_exec_text.py", ["exec_text"]),
    ],
)
def test_fuzz_target_finds_nothing(target: str, corpora: list[str], tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    # libFuzzer adds what it finds to the first corpus directory: work on a copy.
    work = []
    for name in corpora:
        copy = tmp_path / name
        shutil.copytree(ROOT / "fuzz" / "corpus" / name, copy)
        work.append(str(copy))
    result = subprocess.run(
        [sys.executable, str(ROOT / "fuzz" / target), f"-runs={RUNS}", "-max_total_time=60",
         "-rss_limit_mb=2048", *work],
        capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Done" in result.stderr, result.stderr[-1000:]
