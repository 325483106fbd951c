"""A real agent process serving the multiplexer on a unix socket, as QEMU's chardev would
expose it, running commands as the current user."""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from vmsilo.host import proc


@dataclass
class AgentProcess:
    mux_socket: Path
    ports_dir: Path
    poweroff_marker: Path
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    base = tmp_path_factory.mktemp("agent")
    mux_socket = base / "mux.sock"
    ports_dir = base / "ports"
    marker = base / "poweroff-requested"
    log_path = base / "agent.log"
    with log_path.open("wb") as log_file:
        popen = proc.spawn(
            [
                sys.executable,
                "-m",
                "vmsilo.agent",
                "--mux-socket",
                str(mux_socket),
                "--ports-dir",
                str(ports_dir),
                "--default-user",
                getpass.getuser(),
                "--poweroff-command",
                f"touch {marker}",
                "--log-level",
                "DEBUG",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={"PYTHONPATH": str(Path(__file__).resolve().parents[3] / "src")},
        )
    deadline = time.monotonic() + 20
    while not mux_socket.exists():
        if popen.poll() is not None or time.monotonic() > deadline:
            popen.kill()
            pytest.fail(f"agent did not start:\n{log_path.read_text()}")
        time.sleep(0.05)
    yield AgentProcess(mux_socket, ports_dir, marker, popen, log_path)
    popen.terminate()
    try:
        popen.wait(10)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait()
    assert os.path.exists(log_path)
