"""The filter between real Wayland programs and a real compositor (Debian's Weston, headless),
on the host: shared-memory buffers (descriptors) pass through, the window is marked, the
compositor's private globals are not offered, and the security-context helper reports a
compositor without the protocol."""

import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmsilo.wayland.filter import Filter
from vmsilo.wayland.protocols import load_tables

pytestmark = [
    pytest.mark.allow_subprocess,
    pytest.mark.skipif(shutil.which("weston") is None, reason="weston is not installed"),
]


@pytest.fixture
def weston(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    log = tmp_path / "protocol.log"
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            ["weston", "--backend=headless-backend.so", "--socket=wayland-1", "--idle-time=0",
             "--no-config"], stdout=subprocess.DEVNULL, stderr=log_file,
            env={"PATH": "/usr/bin:/bin", "XDG_RUNTIME_DIR": str(runtime),
                 "WAYLAND_DEBUG": "server"})
    for _ in range(200):
        if (runtime / "wayland-1").exists():
            break
        time.sleep(0.05)
    yield runtime / "wayland-1", log
    process.terminate()
    process.wait(10)


@pytest.fixture
def filtered(weston: tuple[Path, Path], tmp_path: Path) -> Iterator[tuple[Filter, Path, Path]]:
    display, log = weston

    def upstream() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(display))
        return sock

    wayland_filter = Filter("work", load_tables(), tmp_path / "filter.sock", upstream)
    wayland_filter.listen()
    threading.Thread(target=wayland_filter.serve_forever, daemon=True).start()
    yield wayland_filter, tmp_path / "filter.sock", log
    wayland_filter.close()


def _client(argv: list[str], display: Path, seconds: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["timeout", str(seconds), *argv], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "XDG_RUNTIME_DIR": str(display.parent),
                               "WAYLAND_DISPLAY": str(display)}, check=False)


def _wait_for(condition: object, seconds: float = 10) -> None:
    for _ in range(int(seconds * 20)):
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)


def test_a_program_draws_through_the_filter(filtered: tuple[Filter, Path, Path]) -> None:
    wayland_filter, display, log = filtered
    result = _client(["weston-simple-shm"], display, 3)
    assert result.returncode == 124, result.stderr  # drew until stopped
    _wait_for(lambda: wayland_filter.stats.connections == 1 and wayland_filter.stats.messages)
    protocol = log.read_text(errors="replace")
    assert 'set_title("[work] simple-shm")' in protocol
    assert "wl_shm@" in protocol and ".create_pool(" in protocol  # the pool's descriptor
    assert sum(1 for line in protocol.splitlines() if ".commit()" in line) > 10
    assert wayland_filter.stats.violations == 0


def test_private_globals_are_hidden(filtered: tuple[Filter, Path, Path]) -> None:
    wayland_filter, display, _ = filtered
    result = _client(["wayland-info"], display, 20)
    assert result.returncode == 0, result.stderr
    offered = {line.split("'")[1] for line in result.stdout.splitlines()
               if line.startswith("interface:")}
    assert "xdg_wm_base" in offered and "wl_shm" in offered
    assert not offered & {"weston_screenshooter", "weston_desktop_shell", "zwp_input_panel_v1"}
    _wait_for(lambda: "weston_screenshooter" in wayland_filter.stats.hidden)
    assert "weston_screenshooter" in wayland_filter.stats.hidden


def test_security_context_helper_reports_a_compositor_without_it(
    weston: tuple[Path, Path], tmp_path: Path,
) -> None:
    display, _ = weston
    result = subprocess.run(
        [sys.executable, "-m", "vmsilo.wayland.seccontext", "--display", str(display),
         "--socket", str(tmp_path / "sc.sock"), "--vm", "work", "--app-id", "vmsilo:work:#ff0000"],
        capture_output=True, text=True, timeout=30, check=False)
    assert (result.returncode, result.stdout) == (3, "unsupported\n"), result.stderr
    assert not (tmp_path / "sc.sock").exists()
