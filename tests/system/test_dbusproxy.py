"""Tray and notification forwarding end to end: a program in a real VM sends a notification
on the guest user's session bus; it appears on the desktop user's (here a private bus run as
`nobody`, the configured user) marked with the VM's name, and the action the desktop invokes
reaches the program in the guest. The host half runs sandboxed as `nobody`, seeing the bus and
not the user's files; taken over (its broker descriptor used by someone else) and asking for
another port of its VM, it is cut off, and the VM's other ports work on."""

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import HELPER_ENV, SYSTEM_PYTHON, RunningDaemon
from tests.support.dbus import start_bus
from tests.support.sandboxed import broker_fd, outside_the_runtime, probe, sandboxed_pids, status
from vmsilo.protocol import broker as wire

NOBODY = 65534
SUPPORT = Path(__file__).parents[1] / "support"

CONFIG = """
enable = true
user = "nobody"

[vms.chatty]
memory = 768
cpus = 1
sharedHome = false
gpu = false
sound.playback = false
rootOverlay.type = "tmpfs"
"""

# In the guest: send a notification with an action, wait for the action to come back.
GUEST_APP = """
import asyncio
from dbus_next.aio.message_bus import MessageBus
from dbus_next.message import Message

async def main():
    bus = await MessageBus().connect()
    got = asyncio.get_running_loop().create_future()
    def on(msg):
        if msg.member == "ActionInvoked" and not got.done():
            got.set_result(msg.body)
    bus.add_message_handler(on)
    await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
        interface="org.freedesktop.DBus", member="AddMatch", signature="s",
        body=["type='signal',member='ActionInvoked'"]))
    reply = await bus.call(Message(destination="org.freedesktop.Notifications",
        path="/org/freedesktop/Notifications", interface="org.freedesktop.Notifications",
        member="Notify", signature="susssasa{sv}i",
        body=["mailer", 0, "", "You have mail", "from <i>Bob</i>", ["open", "Open"], {}, -1]))
    print("id", reply.body[0], flush=True)
    print("action", *(await asyncio.wait_for(got, 60)), flush=True)

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def desktop(test_image: None) -> Iterator[tuple[RunningDaemon, Path]]:
    daemon = RunningDaemon(CONFIG)
    bus_dir = daemon.root / "desktop"
    bus_dir.mkdir()
    os.chmod(bus_dir, 0o777)
    as_nobody = {"user": NOBODY, "group": NOBODY, "extra_groups": []}
    bus, address = start_bus(bus_dir / "bus", **as_nobody)
    received = bus_dir / "notifications.jsonl"
    server = None
    try:
        server = subprocess.Popen([str(SYSTEM_PYTHON), str(SUPPORT / "notification_server.py"),
                                   address, str(received)], stdout=subprocess.PIPE,
                                  cwd="/", env={**os.environ, **HELPER_ENV}, **as_nobody)
        assert server.stdout is not None and server.stdout.readline() == b"ready\n"
        # The host half runs with vmsilod's own interpreter (the suite's, below /root), which
        # its sandbox shows it read-only.
        daemon.extra_env.update({"VMSILO_HOST_SESSION_BUS": address})
        daemon.start()
        yield daemon, received
    finally:
        daemon.stop()
        for process in (server, bus):
            if process is not None:
                process.kill()
                process.wait()


def test_a_guest_notification_reaches_the_desktop_and_its_action_comes_back(
    desktop: tuple[RunningDaemon, Path],
) -> None:
    daemon, received = desktop
    result = daemon.cli("vm-run", "chatty", "python3", "-c", GUEST_APP, timeout=240)
    out = result.stdout.decode()
    log = (daemon.root / "state" / "logs" / "chatty" / "dbus-proxy.log")
    assert result.returncode == 0, (out + result.stderr.decode()
                                    + (log.read_text() if log.exists() else "no proxy log"))
    lines = out.splitlines()
    guest_id = lines[0].split()[1]
    assert lines[1] == f"action {guest_id} open"
    (notification,) = [json.loads(line) for line in received.read_text().splitlines()]
    assert notification["app"] == "[chatty] mailer"
    assert notification["summary"] == "[chatty] You have mail"
    # The server (tests/support/notification_server.py) has no "body-markup" capability: the
    # body is sent as the plain text it is, not escaped (issue 15).
    assert notification["body"] == "from <i>Bob</i>"
    assert notification["actions"] == ["open", "Open"]


MODULE = "vmsilo.dbusproxy.host_main"


def _proxy_pid(daemon: RunningDaemon) -> int:
    for _ in range(200):
        pids = sandboxed_pids(MODULE, "chatty")
        if pids:
            return pids[0]
        time.sleep(0.1)
    raise AssertionError("no D-Bus proxy is running:\n" + daemon.log_path.read_text())


def test_the_host_half_is_jailed_and_sees_no_home(desktop: tuple[RunningDaemon, Path]) -> None:
    daemon, received = desktop
    pid = _proxy_pid(daemon)
    fields = status(pid)
    assert fields["Uid"].split() == [str(NOBODY)] * 4 and fields["Groups"] == ""
    assert fields["NoNewPrivs"] == "1" and int(fields["CapEff"], 16) == 0
    hidden = [received.parent / "notifications.jsonl", daemon.root / "run", Path("/home"),
              *outside_the_runtime(Path("/root"))]
    script = "; ".join(f"test -e '{path}' && echo 'visible: {path}'" for path in hidden)
    result = probe(pid, NOBODY, NOBODY, script + "; ls -A /run/desktop; true")
    assert result.stdout.splitlines() == ["bus"], result.stdout + result.stderr


def test_a_helper_asking_for_another_port_is_cut_off(desktop: tuple[RunningDaemon, Path]) -> None:
    daemon, _ = desktop
    pid = _proxy_pid(daemon)
    # What a proxy taken over by the guest could do: ask its broker for the exec port.
    sock = socket.socket(fileno=broker_fd(pid))
    sock.send(wire.encode_request(5000))
    sock.settimeout(30)
    assert sock.recv(wire.MAX_RECORD) == b"", "the broker answered"
    sock.close()
    log = daemon.log_path.read_text()
    assert ("VM chatty: the D-Bus proxy helper broke its broker's rules (asked for port 5000; "
            "it may only open port 5001)") in log
    for _ in range(100):  # without its broker the proxy ends
        if not sandboxed_pids(MODULE, "chatty"):
            break
        time.sleep(0.1)
    assert not sandboxed_pids(MODULE, "chatty")
    # The VM's other ports are unaffected.
    result = daemon.cli("vm-run", "chatty", "echo", "still here", timeout=120)
    assert result.returncode == 0 and result.stdout == b"still here\n", result.stderr
