"""The desktop entry atheris target (``fuzz/fuzz_desktop.py``) runs a bounded number of
iterations on its corpus: a decoder or encoder that raises anything but its refusal, or
writes a file that does not read back as meant, fails the suite. Without atheris the corpus
is run once."""

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[3]
RUNS = "20000"

def test_the_corpus_runs_clean(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every seed once, in this process (no instrumentation: fast, and atheris not needed)."""
    monkeypatch.syspath_prepend(str(ROOT / "fuzz"))
    target = importlib.import_module("fuzz_desktop")
    seeds = sorted((ROOT / "fuzz" / "corpus" / "desktop").iterdir())
    assert len(seeds) >= 10
    for seed in seeds:
        target.test_one_input(seed.read_bytes())


@pytest.mark.allow_subprocess
def test_fuzzing_finds_nothing(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    # libFuzzer adds what it finds to the corpus directory: work on a copy.
    work = tmp_path / "desktop"
    shutil.copytree(ROOT / "fuzz" / "corpus" / "desktop", work)
    result = subprocess.run(
        [sys.executable, str(ROOT / "fuzz" / "fuzz_desktop.py"), f"-runs={RUNS}",
         "-max_total_time=60", "-rss_limit_mb=2048", str(work)],
        capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Done" in result.stderr, result.stderr[-1000:]
