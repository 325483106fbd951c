"""The Wayland path's host half as vmsilod runs it, without a VM: one bubblewrap sandbox, as the
desktop user (`nobody`), holding the security-context helper, the filter and waypipe's client
half, in front of a headless Weston run as that user. The guest is played by this test:
waypipe's server half and a program, joined to the streams the host half parks through its
broker, as the guest agent joins them. The window arrives marked; the sandbox sees the
compositor's socket at /run/desktop/wayland, an empty private /tmp of its own, and nothing
else of the user's; nothing is created for it on the host."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.sandboxed import (
    namespaces,
    outside_the_runtime,
    probe,
    sandboxed_pids,
    status,
)
from vmsilo.agent.wayland import Parking
from vmsilo.channel.stream import SocketStream, splice_sockets
from vmsilo.config import resolve
from vmsilo.config.load import parse_config
from vmsilo.daemon.wayland import WaylandLauncher
from vmsilo.host.paths import Mode, Paths
from vmsilo.protocol.wayland import CLAIM

pytestmark = [
    pytest.mark.allow_subprocess,
    pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox is root's (setpriv)"),
    pytest.mark.skipif(any(shutil.which(tool) is None
                           for tool in ("weston", "waypipe", "bwrap", "weston-simple-shm")),
                       reason="weston, waypipe and bubblewrap are needed"),
]

NOBODY = 65534
VM = "painter"
CONFIG = f'user = "nobody"\n[vms.{VM}]\nsharedHome = false\ncolor = "#2ecc71"\n'
MODULE = "vmsilo.wayland.host_main"


@dataclass
class Desktop:
    root: Path
    runtime: Path
    home: Path
    protocol_log: Path


@pytest.fixture
def desktop() -> Iterator[Desktop]:
    root = Path(tempfile.mkdtemp(prefix="vmsilo-desktop-", dir="/var/tmp"))
    root.chmod(0o755)
    runtime, home = root / "runtime", root / "home"
    for path in (runtime, home):
        path.mkdir(mode=0o700)
        os.chown(path, NOBODY, NOBODY)
    (home / "diary.txt").write_text("secret")
    log = root / "weston-protocol.log"
    with open(log, "wb") as log_file:
        weston = subprocess.Popen(
            ["weston", "--backend=headless-backend.so", "--socket=wayland-1", "--idle-time=0",
             "--no-config"], stdout=subprocess.DEVNULL, stderr=log_file, cwd="/",
            env={"PATH": "/usr/bin:/bin", "XDG_RUNTIME_DIR": str(runtime),
                 "WAYLAND_DEBUG": "server"}, user=NOBODY, group=NOBODY, extra_groups=[])
    try:
        for _ in range(200):
            if (runtime / "wayland-1").exists():
                break
            time.sleep(0.05)
        yield Desktop(root, runtime, home, log)
    finally:
        weston.terminate()
        weston.wait(10)
        shutil.rmtree(root)


@dataclass
class Guest:
    """The guest's end of port 5003: streams the host asks for are parked; a program's waypipe
    connection claims one."""

    parking: Parking = field(default_factory=Parking)
    asked: list[tuple[str, int, bool]] = field(default_factory=list)

    async def open_port(self, vm: str, port: int, start: bool,
                        timeout: float | None) -> SocketStream:
        self.asked.append((vm, port, start))
        host_end, guest_end = socket.socketpair()
        await self.parking.park(*await asyncio.open_unix_connection(sock=guest_end))
        return SocketStream(*await asyncio.open_unix_connection(sock=host_end))

    async def program(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream = await self.parking.claim()
        assert stream is not None, "no stream parked by the host half"
        stream[1].write(CLAIM)
        await splice_sockets(reader, writer, *stream)
        writer.close()


@pytest.fixture
async def launched(desktop: Desktop, monkeypatch: pytest.MonkeyPatch
                   ) -> AsyncIterator[tuple[WaylandLauncher, Guest]]:
    monkeypatch.setenv("VMSILO_HOST_WAYLAND_DISPLAY", str(desktop.runtime / "wayland-1"))
    guest = Guest()
    launcher = WaylandLauncher(Paths.under(desktop.root / "vmsilo", Mode.SYSTEM),
                               (NOBODY, NOBODY), guest.open_port)
    launcher.start(resolve(parse_config(CONFIG)).vms[VM])
    try:
        yield launcher, guest
    finally:
        launcher.stop_all()


async def _until(condition: object, seconds: float = 30) -> None:
    for _ in range(int(seconds * 20)):
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


def _log(desktop: Desktop) -> str:
    path = desktop.root / "vmsilo" / "state" / "logs" / VM / "wayland.log"
    return path.read_text() if path.exists() else "no log"


async def test_a_window_arrives_marked_through_the_sandbox(
    desktop: Desktop, launched: tuple[WaylandLauncher, Guest], tmp_path: Path,
) -> None:
    _, guest = launched
    await _until(lambda: guest.parking.queue.qsize() >= 1)
    assert set(guest.asked) == {(VM, 5003, False)}
    server = await asyncio.start_unix_server(guest.program, path=str(tmp_path / "waypipe.sock"))
    runtime = tmp_path / "guest-runtime"
    runtime.mkdir(mode=0o700)
    program = await asyncio.create_subprocess_exec(
        "waypipe", "--no-gpu", "--socket", str(tmp_path / "waypipe.sock"), "server", "--",
        "timeout", "3", "weston-simple-shm",
        env={"PATH": "/usr/bin:/bin", "XDG_RUNTIME_DIR": str(runtime)},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, errors = await asyncio.wait_for(program.communicate(), 60)
    server.close()
    protocol = desktop.protocol_log.read_text(errors="replace")
    titles = [line for line in protocol.splitlines() if ".set_title(" in line]
    assert any('set_title("[painter] simple-shm")' in line for line in titles), (
        titles, errors.decode(), _log(desktop))
    frames = sum(1 for line in protocol.splitlines()
                 if "wl_surface@" in line and ".commit()" in line)
    assert frames > 5
    assert "no security-context protocol" in _log(desktop)


async def test_the_sandbox_is_the_desktop_users_and_sees_only_the_compositor(
    desktop: Desktop, launched: tuple[WaylandLauncher, Guest],
) -> None:
    _, guest = launched
    await _until(lambda: guest.asked)
    (pid,) = sandboxed_pids(MODULE, VM)
    fields = status(pid)
    assert fields["Uid"].split() == [str(NOBODY)] * 4 and fields["Groups"] == ""
    assert fields["NoNewPrivs"] == "1" and int(fields["CapEff"], 16) == 0
    ours, theirs = namespaces(os.getpid()), namespaces(pid)
    assert all(ours[ns] != theirs[ns] for ns in ours), (ours, theirs)
    # waypipe's client half runs in the same sandbox, as the same user.
    await _until(lambda: "waypipe" in probe(pid, NOBODY, NOBODY, "ps -eo comm").stdout)
    hidden = [desktop.home, desktop.home / "diary.txt", desktop.runtime,
              desktop.protocol_log, desktop.root / "vmsilo", Path("/home"), Path("/var"),
              *outside_the_runtime(Path("/root"))]
    script = "; ".join(f"test -e '{path}' && echo 'visible: {path}'" for path in hidden)
    script += ("; test -S /run/desktop/wayland && echo compositor; ls -A /run/desktop; "
               "ls /tmp/vmsilo-wayland-*; true")
    result = probe(pid, NOBODY, NOBODY, script)
    lines = result.stdout.splitlines()
    assert not [line for line in lines if line.startswith("visible")], lines
    assert lines[:2] == ["compositor", "wayland"], lines
    assert {"filter.sock", "waypipe.sock"} <= set(lines[2:]), lines
    # Nothing was made for it on the host: no Wayland directory in vmsilod's runtime dir.
    assert not (desktop.root / "vmsilo" / "run").exists()


async def test_stopping_ends_all_three(
    desktop: Desktop, launched: tuple[WaylandLauncher, Guest],
) -> None:
    launcher, guest = launched
    await _until(lambda: guest.asked)
    (pid,) = sandboxed_pids(MODULE, VM)
    launcher.stop(VM)
    assert sandboxed_pids(MODULE, VM) == []
    assert not Path(f"/proc/{pid}").exists()
    assert "the Wayland half ends" in _log(desktop)
