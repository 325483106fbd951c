"""The host half's main loop (``host_main.serve``) with the test as vmsilod's stream broker:
after a guest breaks the protocol, the host half hangs up, pauses (a back-off that grows with
violations in a row) and connects again through its broker — the VM's proxy comes back instead
of staying dead until the VM restarts — and it ends when the broker is closed."""

import argparse
import asyncio
import shutil
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from dbus_next.aio.message_bus import MessageBus

from tests.integration.dbusproxy.test_proxy import NotificationServer
from tests.support.dbus import start_bus
from vmsilo.dbusproxy import host_main
from vmsilo.protocol import broker
from vmsilo.protocol import dbusproxy as wire

pytestmark = [
    pytest.mark.allow_subprocess,
    pytest.mark.skipif(shutil.which("dbus-daemon") is None, reason="dbus-daemon is missing"),
]


@pytest.fixture
def host_bus(tmp_path: Path) -> Iterator[str]:
    process, address = start_bus(tmp_path / "host.sock")
    yield address
    process.send_signal(signal.SIGTERM)
    process.wait(10)


async def test_after_a_violation_the_host_half_connects_again(
    host_bus: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(host_main, "RETRY_SECONDS", 0.05)  # the back-off, time compressed
    bus = await MessageBus(bus_address=host_bus).connect()
    server = NotificationServer()
    bus.export("/org/freedesktop/Notifications", server)
    await bus.request_name("org.freedesktop.Notifications")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    args = argparse.Namespace(vm="work", colour="1,2,3", bus=host_bus,
                              broker_fd=theirs.detach(), tray=True, notifications=True)
    serving = asyncio.create_task(host_main.serve(args))

    async def next_stream() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Answer the helper's next OPEN with a fresh stream; our end of it."""
        record, fds, flags = await asyncio.wait_for(broker.receive(ours, 1), 10)
        assert broker.decode_request(record, fds, flags) == wire.PORT
        mine, helpers = socket.socketpair()
        await broker.send(ours, broker.encode_reply(broker.Reply.OK), [helpers.fileno()])
        helpers.close()
        return await asyncio.open_unix_connection(sock=mine)

    # A hostile guest: a lone surrogate (a violation, not a crash).
    reader, writer = await next_stream()
    writer.write(wire.HEADER.pack(41) + b'{"t":"notify","nid":1,"summary":"\\ud800!"}')
    assert await asyncio.wait_for(reader.read(), 10) == b""  # it hung up
    writer.close()
    # It asks again after its pause; the guest now behaves and is served.
    reader, writer = await next_stream()
    writer.write(wire.encode({"t": "notify", "nid": 1, "summary": "back"}))
    await asyncio.wait_for(server.got.wait(), 10)
    assert server.received[0][3] == "[work] back"
    writer.close()
    # vmsilod closes the broker: the host half ends (it may be between connections).
    ours.close()
    assert await asyncio.wait_for(serving, 10) == 0
    bus.disconnect()
