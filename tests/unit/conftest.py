"""Unit tests are pure: no spawned processes. The autouse fixture below makes any attempt to
start one fail loudly, unless the test is marked ``allow_subprocess``."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest


class UnexpectedSubprocessError(AssertionError):
    pass


@pytest.fixture(autouse=True)
def _forbid_subprocesses(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    if request.node.get_closest_marker("allow_subprocess"):
        yield
        return

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise UnexpectedSubprocessError(f"unit test tried to spawn a process: {args[:2]!r}")

    monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse)
    for name in ("posix_spawn", "posix_spawnp", "fork", "forkpty", "system"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, refuse)
    for name in ("execv", "execve", "execvp", "execvpe"):
        monkeypatch.setattr(os, name, refuse)
    yield
