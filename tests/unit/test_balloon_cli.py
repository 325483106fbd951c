"""``vmsilo balloon status`` as a user runs it, without a running balloond and with a status."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from vmsilo.cli.main import main


def test_status_without_balloond_says_how_it_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VMSILO_ROOT", str(tmp_path))
    assert main(["balloon", "status"]) == 1
    err = capsys.readouterr().err
    assert "vmsilo-balloond is not running" in err and "vmsilod starts it" in err


def test_status_table_from_the_status_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VMSILO_ROOT", str(tmp_path))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "balloond.json").write_text(json.dumps({
        "updated": time.time(), "interval": 2.0,
        "host": {"total": 8 << 30, "available": 3 << 30, "criticalAvailable": 400 << 20,
                 "psiSomeAvg10": 0.0},
        "vms": {"work": {"actual": 256 << 20, "target": 300 << 20, "guestAvailable": 900 << 20,
                         "floor": 400 << 20, "state": "fresh", "reason": "inflate 44 MiB"}},
    }))
    assert main(["balloon", "status"]) == 0
    out = capsys.readouterr().out
    assert "host: 3072 MiB available of 8192 MiB" in out
    assert "work" in out and "inflate 44 MiB" in out and "256 MiB" in out
