"""The stream broker between vmsilod and one helper, in one process over real socket pairs:
the helper gets streams to its own port, spliced to a guest stream (here an echo service on
a socket pair standing for the VM's channel); anything else it sends — another port, garbage,
an oversized record, a descriptor — is logged with the VM's name, never reaches
``open_port``, closes its broker and ends the streams it had, and the launcher hears of it;
and the number of open streams is capped."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from vmsilo.channel.stream import SocketStream
from vmsilo.daemon.broker import StreamBroker
from vmsilo.errors import UserError
from vmsilo.protocol import broker as wire

VM = "mail"
PORT = 5001


@dataclass
class Guest:
    """What ``open_port`` was asked, and the guest service's echo tasks."""

    calls: list[tuple[str, int, bool]] = field(default_factory=list)
    refuse: str | None = None
    violations: list[str] = field(default_factory=list)  # what the launcher was told
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def open_port(self, vm: str, port: int, start: bool,
                        timeout: float | None) -> SocketStream:
        self.calls.append((vm, port, start))
        if self.refuse:
            raise UserError(self.refuse)
        ours, service = socket.socketpair()
        task = asyncio.create_task(self._echo(service))
        self.tasks.add(task)
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        return SocketStream(reader, writer)

    @staticmethod
    async def _echo(sock: socket.socket) -> None:
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        while data := await reader.read(65536):
            writer.write(data.upper())
            await writer.drain()
        writer.close()


@pytest.fixture
async def setup() -> AsyncIterator[tuple[StreamBroker, wire.BrokerClient, Guest]]:
    guest = Guest()
    broker = StreamBroker(VM, "D-Bus proxy", PORT, guest.open_port, max_streams=2,
                          on_violation=lambda: guest.violations.append(VM))
    client = wire.BrokerClient(os.dup(broker.helper_fd))
    broker.release()
    broker.start()
    yield broker, client, guest
    client.close()
    broker.close()
    for task in guest.tasks:
        task.cancel()


async def _roundtrip(sock: socket.socket, data: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    writer.write(data)
    await writer.drain()
    answer = await asyncio.wait_for(reader.readexactly(len(data)), 5)
    writer.close()
    return answer


async def _closed(client: wire.BrokerClient) -> None:
    with pytest.raises(wire.BrokerClosedError):
        await asyncio.wait_for(client.open(PORT), 5)


async def test_a_stream_to_its_own_port_is_spliced_to_the_guest(setup: tuple) -> None:
    _broker, client, guest = setup
    sock = await client.open(PORT)
    assert await _roundtrip(sock, b"hello guest") == b"HELLO GUEST"
    # A helper never starts a VM.
    assert guest.calls == [(VM, PORT, False)]


async def test_another_port_closes_the_broker_and_is_never_opened(
    setup: tuple, caplog: pytest.LogCaptureFixture,
) -> None:
    broker, client, guest = setup
    first = await client.open(PORT)
    with caplog.at_level(logging.WARNING):
        await _closed_after(client, wire.encode_request(5000))
    assert guest.calls == [(VM, PORT, False)]  # port 5000 never reached the supervisor
    assert f"VM {VM}: the D-Bus proxy helper broke its broker's rules (asked for port 5000" \
        in caplog.text
    assert broker.violation is not None
    assert guest.violations == [VM]
    # The stream it already had is ended too.
    reader, _ = await asyncio.open_unix_connection(sock=first)
    assert await asyncio.wait_for(reader.read(), 5) == b""


async def _closed_after(client: wire.BrokerClient, record: bytes,
                        fds: list[int] | None = None) -> None:
    await wire.send(client.sock, record, fds)
    untrusted_record, got, _ = await asyncio.wait_for(wire.receive(client.sock, 1), 5)
    assert (untrusted_record, got) == (b"", []), "the broker answered a violation"
    await _closed(client)


@pytest.mark.parametrize("record", [
    b"hello",  # short
    b"GIVE" + (PORT).to_bytes(4, "big"),  # unknown request
    wire.encode_request(PORT) + b"x",  # longer than a request
    b"x" * 70000,  # far longer than any record
    b"",  # an empty record: the end of the conversation
], ids=["short", "unknown", "long", "huge", "empty"])
async def test_garbage_closes_the_broker(setup: tuple, record: bytes) -> None:
    _broker, client, guest = setup
    await _closed_after(client, record)
    assert guest.calls == []
    assert guest.violations == ([] if record == b"" else [VM])


async def test_a_descriptor_sent_along_closes_the_broker(setup: tuple) -> None:
    broker, client, guest = setup
    read_end, write_end = os.pipe()
    try:
        await _closed_after(client, wire.encode_request(PORT), [read_end])
    finally:
        os.close(read_end)
        os.close(write_end)
    assert guest.calls == []
    assert "descriptor" in (broker.violation or "")


async def test_streams_are_capped_and_freed_when_they_end(setup: tuple) -> None:
    broker, client, guest = setup
    first = await client.open(PORT)
    second = await client.open(PORT)
    with pytest.raises(wire.StreamUnavailableError) as info:
        await client.open(PORT)
    assert info.value.code is wire.Reply.BUSY
    assert len(guest.calls) == 2  # the third was not even asked for
    first.close()
    for _ in range(100):
        if broker.streams < 2:
            break
        await asyncio.sleep(0.05)
    third = await client.open(PORT)
    assert await _roundtrip(third, b"three") == b"THREE"
    second.close()


async def test_a_port_that_cannot_be_opened_now_is_retried(setup: tuple) -> None:
    _broker, client, guest = setup
    guest.refuse = "VM mail: port 5001 refused the stream: nothing listens"
    with pytest.raises(wire.StreamUnavailableError) as info:
        await client.open(PORT)
    assert info.value.code is wire.Reply.RETRY
    assert "nothing listens" in info.value.reason
    guest.refuse = None
    sock = await client.open(PORT)
    assert await _roundtrip(sock, b"later") == b"LATER"


async def test_closing_the_broker_ends_the_helper_and_its_streams(setup: tuple) -> None:
    broker, client, _guest = setup
    sock = await client.open(PORT)
    broker.close()
    await _closed(client)
    reader, _ = await asyncio.open_unix_connection(sock=sock)
    assert await asyncio.wait_for(reader.read(), 5) == b""
