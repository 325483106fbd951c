"""The bash completion as bash runs it: VM names from the config, subcommands of vmsilo."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "contrib" / "bash-completion" / "vmsilo"
EXAMPLE = ROOT / "tests" / "unit" / "config" / "example.toml"

pytestmark = [pytest.mark.allow_subprocess,
              pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")]


def complete(*words: str, function: str) -> list[str]:
    quoted = " ".join(f"'{w}'" for w in words)
    script = (f"source {SCRIPT}; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; "
              f"{function}; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                            env={"VMSILO_CONFIG": str(EXAMPLE), "PATH": "/usr/bin:/bin"},
                            check=True)
    return [line for line in result.stdout.splitlines() if line]


def test_vm_names_complete_for_vm_run() -> None:
    assert complete("vm-run", "", function="_vmsilo_vm_first") == [
        "banking", "personal", "shopping", "sys-net"]
    assert complete("vm-run", "-u", "root", "sh", function="_vmsilo_vm_first") == [
        "shopping"]


def test_vm_stop_offers_all() -> None:
    assert "--all" in complete("vm-stop", "", function="_vmsilo_stop")


def test_vmsilo_subcommands() -> None:
    assert complete("vmsilo", "ba", function="_vmsilo") == ["balloon"]
    assert complete("vmsilo", "image", "", function="_vmsilo") == ["build", "list", "gc"]
    assert complete("vmsilo", "net", "show", "sh", function="_vmsilo") == ["shopping"]
