"""The D-Bus proxy's host half as vmsilod runs it, without a VM: in a bubblewrap sandbox as the
desktop user (`nobody`), on a private session bus standing for the user's. It runs with no
capabilities and no_new_privs in namespaces of its own, sees the bus socket at
/run/desktop/bus and nothing else of the user's (not their home, not the other files next to
the bus socket, not vmsilod's state), and asks its broker for guest port 5001 of its own VM,
never to start it. Taken over (its broker descriptor used by someone else) and asking for
another port, it is stopped. A bus path the user turned into a link is refused."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.dbus import start_bus
from tests.support.sandboxed import (
    broker_fd,
    namespaces,
    outside_the_runtime,
    probe,
    sandboxed_pids,
    status,
)
from vmsilo.config import resolve
from vmsilo.config.load import parse_config
from vmsilo.daemon.dbusproxy import ProxyLauncher
from vmsilo.errors import UserError
from vmsilo.host.interpreter import runtime_binds
from vmsilo.host.paths import Mode, Paths
from vmsilo.protocol import broker as wire

pytestmark = [
    pytest.mark.allow_subprocess,
    pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox is root's (setpriv)"),
    pytest.mark.skipif(shutil.which("dbus-daemon") is None or shutil.which("bwrap") is None,
                       reason="dbus-daemon and bubblewrap are needed"),
]

NOBODY = 65534
VM = "mail"
CONFIG = f'user = "nobody"\n[vms.{VM}]\nsharedHome = false\n'


@dataclass
class Desktop:
    root: Path
    runtime: Path  # the user's runtime directory: the bus socket and a file next to it
    home: Path
    address: str


@pytest.fixture
def desktop() -> Iterator[Desktop]:
    root = Path(tempfile.mkdtemp(prefix="vmsilo-desktop-", dir="/var/tmp"))
    root.chmod(0o755)
    runtime, home = root / "runtime", root / "home"
    for path in (runtime, home):
        path.mkdir(mode=0o700)
        os.chown(path, NOBODY, NOBODY)
    (runtime / "pulse-cookie").write_text("secret")
    (home / "diary.txt").write_text("secret")
    bus, address = start_bus(runtime / "bus", user=NOBODY, group=NOBODY, extra_groups=[])
    try:
        yield Desktop(root, runtime, home, address)
    finally:
        bus.send_signal(signal.SIGTERM)
        bus.wait(10)
        shutil.rmtree(root)


@pytest.fixture
async def launched(desktop: Desktop, monkeypatch: pytest.MonkeyPatch
                   ) -> AsyncIterator[tuple[ProxyLauncher, list[tuple[str, int, bool]]]]:
    monkeypatch.setenv("VMSILO_HOST_SESSION_BUS", desktop.address)
    asked: list[tuple[str, int, bool]] = []

    async def open_port(vm: str, port: int, start: bool, timeout: float | None) -> object:
        asked.append((vm, port, start))
        raise UserError(f"VM {vm}: port {port} refused the stream: nothing listens")

    launcher = ProxyLauncher(Paths.under(desktop.root / "vmsilo", Mode.SYSTEM), (NOBODY, NOBODY),
                             open_port)
    launcher.start(resolve(parse_config(CONFIG)).vms[VM])
    try:
        yield launcher, asked
    finally:
        launcher.stop_all()


async def _until(condition: object, seconds: float = 20) -> None:
    for _ in range(int(seconds * 20)):
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


def _log(desktop: Desktop) -> str:
    path = desktop.root / "vmsilo" / "state" / "logs" / VM / "dbus-proxy.log"
    return path.read_text() if path.exists() else "no log"


async def test_the_host_half_is_jailed_as_the_desktop_user(
    desktop: Desktop, launched: tuple[ProxyLauncher, list[tuple[str, int, bool]]],
) -> None:
    _launcher, asked = launched
    # It asks for its own port of its own VM, and never to start the VM.
    await _until(lambda: asked)
    assert set(asked) == {(VM, 5001, False)}, _log(desktop)
    (pid,) = sandboxed_pids("vmsilo.dbusproxy.host_main", VM)
    fields = status(pid)
    assert fields["Uid"].split() == [str(NOBODY)] * 4
    assert fields["Gid"].split() == [str(NOBODY)] * 4
    assert fields["Groups"] == ""
    assert fields["NoNewPrivs"] == "1"
    assert int(fields["CapEff"], 16) == int(fields["CapPrm"], 16) == 0
    assert int(fields["CapBnd"], 16) == 0
    ours, theirs = namespaces(os.getpid()), namespaces(pid)
    assert all(ours[ns] != theirs[ns] for ns in ours), (ours, theirs)
    # The log directory is root's own; the helper's log is written there for it.
    log_dir = desktop.root / "vmsilo" / "state" / "logs" / VM
    assert log_dir.stat().st_uid == 0 and log_dir.stat().st_mode & 0o022 == 0


async def test_it_sees_the_bus_socket_and_nothing_else_of_the_user(
    desktop: Desktop, launched: tuple[ProxyLauncher, list[tuple[str, int, bool]]],
) -> None:
    _, asked = launched
    await _until(lambda: asked)
    (pid,) = sandboxed_pids("vmsilo.dbusproxy.host_main", VM)
    hidden = [desktop.home, desktop.home / "diary.txt", desktop.runtime / "pulse-cookie",
              desktop.runtime / "bus", desktop.root / "vmsilo", Path("/home"),
              Path("/etc/passwd"), Path("/var"), *outside_the_runtime(Path("/root"))]
    script = "; ".join(f"test -e '{path}' && echo 'visible: {path}'" for path in hidden)
    script += "; test -S /run/desktop/bus && echo bus; ls -A /tmp /run/desktop; id -u"
    result = probe(pid, NOBODY, NOBODY, script + "; true")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert not [line for line in lines if line.startswith("visible")], lines
    # /tmp is the sandbox's own, empty but for the parents of the interpreter's read-only
    # binds when the checkout or its virtualenv lives below /tmp (a clone in /tmp, say).
    in_tmp = sorted({path.relative_to("/tmp").parts[0] for path in runtime_binds()
                     if Path("/tmp") in path.parents})
    assert lines == ["bus", "/run/desktop:", "bus", "", "/tmp:", *in_tmp, str(NOBODY)]


async def test_stopping_ends_the_sandbox(
    desktop: Desktop, launched: tuple[ProxyLauncher, list[tuple[str, int, bool]]],
) -> None:
    launcher, asked = launched
    await _until(lambda: asked)
    launcher.stop(VM)
    assert sandboxed_pids("vmsilo.dbusproxy.host_main", VM) == []
    assert "the D-Bus proxy ends" in _log(desktop)


async def test_a_helper_asking_for_another_port_is_stopped(
    desktop: Desktop, launched: tuple[ProxyLauncher, list[tuple[str, int, bool]]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    launcher, asked = launched
    await _until(lambda: asked)
    (pid,) = sandboxed_pids("vmsilo.dbusproxy.host_main", VM)
    stolen = socket.socket(fileno=broker_fd(pid))
    stolen.send(wire.encode_request(5000))
    await _until(lambda: not sandboxed_pids("vmsilo.dbusproxy.host_main", VM))
    assert launcher.running == {}
    assert (f"VM {VM}: the D-Bus proxy helper broke its broker's rules (asked for port 5000; "
            "it may only open port 5001); it is cut off") in caplog.text
    assert {port for _, port, _ in asked} == {5001}
    stolen.close()


async def test_a_bus_path_turned_into_a_link_is_refused(
    desktop: Desktop, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    secret = desktop.root / "root-only"
    secret.mkdir(mode=0o700)
    (secret / "key").write_text("root's")
    link = desktop.runtime / "evil-bus"
    link.symlink_to(secret / "key")
    monkeypatch.setenv("VMSILO_HOST_SESSION_BUS", f"unix:path={link}")

    async def open_port(vm: str, port: int, start: bool, timeout: float | None) -> object:
        raise AssertionError("no helper should run")

    launcher = ProxyLauncher(Paths.under(desktop.root / "vmsilo", Mode.SYSTEM), (NOBODY, NOBODY),
                             open_port)
    launcher.start(resolve(parse_config(CONFIG)).vms[VM])
    assert launcher.running == {}
    assert "the D-Bus proxy cannot start" in caplog.text
    assert "not a socket" in caplog.text
    assert sandboxed_pids("vmsilo.dbusproxy.host_main", VM) == []
