"""The guard itself: a unit test that spawns without the marker must fail."""

from __future__ import annotations

import subprocess

import pytest

from tests.unit.conftest import UnexpectedSubprocessError
from vmsilo.host import proc


def test_spawning_is_refused() -> None:
    with pytest.raises(UnexpectedSubprocessError):
        subprocess.run(["true"], check=False)
    with pytest.raises(UnexpectedSubprocessError):
        proc.run(["true"])


@pytest.mark.allow_subprocess
def test_marker_allows_spawning() -> None:
    assert proc.run(["true"]).returncode == 0


@pytest.mark.allow_subprocess
def test_process_error_carries_command_and_output() -> None:
    with pytest.raises(proc.ProcessError) as info:
        proc.run(["sh", "-c", "echo oops >&2; exit 3"])
    assert info.value.returncode == 3
    assert info.value.command == ["sh", "-c", "echo oops >&2; exit 3"]
    assert "oops" in str(info.value)
    with pytest.raises(proc.ProcessError, match="command not found"):
        proc.run(["/nonexistent/tool"])
