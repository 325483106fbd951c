"""The multiplexer between two real socket ends: flow control, per-stream resets on
violations, whole-connection teardown on broken framing, and restart handshakes."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from vmsilo.channel import mux
from vmsilo.channel.mux import MuxConnection, MuxStream, StreamHandler
from vmsilo.channel.stream import StreamRefusedError, StreamResetError
from vmsilo.protocol import mux as wire
from vmsilo.protocol.mux import FrameType, Role

ECHO, SINK = 7, 9


async def echo(stream: MuxStream) -> None:
    while data := await stream.read():
        await stream.write(data)
    await stream.write_eof()


async def never_read(stream: MuxStream) -> None:
    await asyncio.sleep(3600)


async def guest_acceptor(port: int) -> StreamHandler:
    if port == ECHO:
        return echo
    if port == SINK:
        return never_read
    raise StreamRefusedError(port, f"nothing listens on port {port}")


@dataclass
class Pair:
    host: MuxConnection
    guest: MuxConnection
    guest_writer: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]]


async def connect_pair(window: int = wire.MIN_WINDOW) -> Pair:
    host_sock, guest_sock = socket.socketpair()
    h_reader, h_writer = await asyncio.open_connection(sock=host_sock)
    g_reader, g_writer = await asyncio.open_connection(sock=guest_sock)
    host = MuxConnection(h_reader, h_writer, role=Role.HOST, peer_name="vm testvm", window=window)
    guest = MuxConnection(
        g_reader,
        g_writer,
        role=Role.GUEST,
        peer_name="host",
        acceptor=guest_acceptor,
        window=window,
    )
    tasks = [asyncio.create_task(host.run()), asyncio.create_task(guest.run())]
    await asyncio.wait_for(host.established.wait(), 5)
    await asyncio.wait_for(guest.established.wait(), 5)
    return Pair(host, guest, g_writer, tasks)


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    p = await connect_pair()
    yield p
    await p.host.close()
    await p.guest.close()
    await asyncio.gather(*p.tasks, return_exceptions=True)


async def echo_round_trip(host: MuxConnection, payload: bytes) -> bytes:
    stream = await host.open_stream(ECHO, timeout=5)
    writer = asyncio.create_task(stream.write(payload))
    received = bytearray()
    while len(received) < len(payload):
        chunk = await stream.read()
        assert chunk
        received += chunk
    await writer
    await stream.close()
    return bytes(received)


async def test_echo_and_many_concurrent_streams(pair: Pair) -> None:
    payloads = [bytes([i]) * (100_000 + i) for i in range(30)]
    results = await asyncio.gather(*(echo_round_trip(pair.host, p) for p in payloads))
    assert results == payloads
    assert pair.host.stream_count == 0


async def test_half_close_passes_eof(pair: Pair) -> None:
    stream = await pair.host.open_stream(ECHO, timeout=5)
    await stream.write(b"abc")
    await stream.write_eof()
    assert await stream.readexactly(3) == b"abc"
    assert await stream.read() == b""
    await stream.close()


async def test_unknown_port_refused(pair: Pair) -> None:
    with pytest.raises(StreamRefusedError) as info:
        await pair.host.open_stream(1234, timeout=5)
    assert info.value.reason == "nothing listens on port 1234"


async def test_stalled_stream_is_bounded_and_does_not_block_others(pair: Pair) -> None:
    stalled = await pair.host.open_stream(SINK, timeout=5)
    # Writing more than the window to a stream nobody reads blocks only that writer.
    blocked = asyncio.create_task(stalled.write(b"x" * (3 * wire.MIN_WINDOW)))
    await asyncio.sleep(0.2)
    assert not blocked.done()
    assert await echo_round_trip(pair.host, b"y" * 500_000) == b"y" * 500_000
    guest_side = pair.guest._streams[stalled.stream_id]
    assert guest_side._buffered <= wire.MIN_WINDOW
    blocked.cancel()
    await stalled.close()


async def test_data_beyond_credit_resets_only_that_stream(
    pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    victim = await pair.host.open_stream(SINK, timeout=5)
    healthy = await pair.host.open_stream(ECHO, timeout=5)
    with caplog.at_level(logging.WARNING):
        for _ in range(wire.MIN_WINDOW // wire.MAX_DATA + 1):
            pair.guest_writer.write(
                wire.encode_frame(FrameType.DATA, victim.stream_id, b"z" * wire.MAX_DATA)
            )
        await asyncio.sleep(0.2)
    with pytest.raises(StreamResetError):
        while await victim.read():
            pass
    assert "vm testvm" in caplog.text and "beyond the credit" in caplog.text
    await healthy.write(b"still fine")
    assert await healthy.readexactly(10) == b"still fine"
    assert not pair.host.closed.is_set()


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(
            lambda sid: wire.encode_frame(FrameType.CREDIT, sid, b"\0"), id="short-credit"
        ),
        pytest.param(
            lambda sid: wire.encode_frame(FrameType.CREDIT, sid, b"\0\0\0\0"), id="zero-credit"
        ),
        pytest.param(
            lambda sid: wire.encode_frame(FrameType.ACCEPT, sid, b"\0\1\0\0"), id="second-accept"
        ),
        pytest.param(lambda sid: wire.encode_frame(FrameType.EOF, sid, b"x"), id="eof-payload"),
        pytest.param(lambda sid: wire.encode_open(sid, 7, wire.MIN_WINDOW), id="open-host-id"),
    ],
)
async def test_bad_stream_frame_resets_only_that_stream(pair: Pair, frame: object) -> None:
    victim = await pair.host.open_stream(SINK, timeout=5)
    healthy = await pair.host.open_stream(ECHO, timeout=5)
    pair.guest_writer.write(frame(victim.stream_id))  # type: ignore[operator]
    await asyncio.sleep(0.1)
    assert victim.is_reset
    await healthy.write(b"ok")
    assert await healthy.readexactly(2) == b"ok"


async def test_frame_for_unknown_stream_is_answered_with_reset(pair: Pair) -> None:
    pair.guest_writer.write(wire.encode_frame(FrameType.DATA, 999, b"hello"))
    await asyncio.sleep(0.1)
    assert not pair.host.closed.is_set()
    assert await echo_round_trip(pair.host, b"fine") == b"fine"


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"XX" + bytes(10), id="bad-magic"),
        pytest.param(
            wire.HEADER.pack(wire.MAGIC, 9, FrameType.DATA, 1, 1) + b"x", id="bad-version"
        ),
        pytest.param(wire.HEADER.pack(wire.MAGIC, 1, 77, 1, 0), id="unknown-type"),
        pytest.param(wire.HEADER.pack(wire.MAGIC, 1, FrameType.DATA, 1, 2**31), id="huge-length"),
        pytest.param(wire.HEADER.pack(wire.MAGIC, 1, FrameType.DATA, 0, 1) + b"x", id="data-on-0"),
    ],
)
async def test_broken_header_tears_down_connection(
    pair: Pair, garbage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    open_stream = await pair.host.open_stream(SINK, timeout=5)
    with caplog.at_level(logging.WARNING):
        pair.guest_writer.write(garbage)
        await asyncio.wait_for(pair.host.closed.wait(), 5)
    assert "vm testvm: mux connection torn down" in caplog.text
    assert open_stream.is_reset
    with pytest.raises(StreamResetError):
        await open_stream.read()


async def test_peer_restart_resets_streams_and_handshakes_again(pair: Pair) -> None:
    stream = await pair.host.open_stream(SINK, timeout=5)
    # A restarted guest agent starts with a fresh, initial HELLO.
    pair.guest_writer.write(wire.encode_hello(Role.GUEST, reply=False))
    await asyncio.sleep(0.1)
    assert stream.is_reset
    assert not pair.host.closed.is_set()


async def test_a_restarted_host_numbers_its_streams_from_the_start(pair: Pair) -> None:
    """The guest's connection outlives a host restart (vmsilod re-adopting its VM): the new
    host's first stream id, 1, must be accepted although the old host used higher ones."""
    for _ in range(3):
        assert await echo_round_trip(pair.host, b"old host") == b"old host"
    # The new host greets with its own session, then opens its stream 1.
    pair.guest._on_hello(wire.Hello(Role.HOST, False, 12345))
    pair.guest._on_open(1, wire.Open(SINK, wire.MIN_WINDOW))
    assert 1 in pair.guest._streams


async def test_duplicate_hello_from_the_same_peer_keeps_streams(pair: Pair) -> None:
    """After a host reconnect both ends greet at once; the guest's second HELLO names the
    session the host already knows and must not reset the stream opened in between."""
    stream = await pair.host.open_stream(SINK, timeout=5)
    same_guest = pair.guest._session
    pair.guest_writer.write(wire.encode_hello(Role.GUEST, reply=False, session=same_guest))
    pair.guest_writer.write(wire.encode_hello(Role.GUEST, reply=True, session=same_guest))
    await asyncio.sleep(0.1)
    assert not stream.is_reset
    assert await echo_round_trip(pair.host, b"still open") == b"still open"


async def test_garbage_before_hello_is_skipped() -> None:
    host_sock, guest_sock = socket.socketpair()
    guest_sock.sendall(b"leftover bytes from a previous host \x00\x01VX")
    h_reader, h_writer = await asyncio.open_connection(sock=host_sock)
    g_reader, g_writer = await asyncio.open_connection(sock=guest_sock)
    host = MuxConnection(h_reader, h_writer, role=Role.HOST, peer_name="vm testvm")
    guest = MuxConnection(
        g_reader, g_writer, role=Role.GUEST, peer_name="host", acceptor=guest_acceptor
    )
    tasks = [asyncio.create_task(host.run()), asyncio.create_task(guest.run())]
    try:
        await asyncio.wait_for(host.established.wait(), 5)
        assert await echo_round_trip(host, b"synced") == b"synced"
    finally:
        await host.close()
        await guest.close()
        await asyncio.gather(*tasks, return_exceptions=True)


# --- a peer that stops reading, and log floods ---------------------------------------------


def _cheap_frames(kind: str, start: int, count: int) -> bytes:
    """``count`` small frames, each of which the host must answer with a control reply."""
    if kind == "data-unknown":  # answered with RESET (a per-stream violation)
        return wire.encode_frame(FrameType.DATA, 1_000_000, b"x") * count
    if kind == "open-refused":  # answered with REFUSE
        return b"".join(wire.encode_open(2 * (start + i + 1), 5000, wire.MIN_WINDOW)
                        for i in range(count))
    # a "restarted" guest each time: answered with HELLO
    return b"".join(wire.encode_hello(Role.GUEST, reply=False, session=start + i + 1)
                    for i in range(count))


@pytest.mark.parametrize("kind", ["data-unknown", "open-refused", "hello"])
async def test_a_peer_that_stops_reading_is_disconnected_with_bounded_memory(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A fake guest sends up to a million cheap frames and never reads the answers: the host
    queues at most its cap, then drops that connection (said once, with the VM's name)."""
    host_sock, guest_sock = socket.socketpair()
    guest_sock.setblocking(False)
    h_reader, h_writer = await asyncio.open_connection(sock=host_sock)
    host = MuxConnection(h_reader, h_writer, role=Role.HOST, peer_name="vm testvm")
    runner = asyncio.create_task(host.run())
    loop = asyncio.get_running_loop()
    batch, sent, peak = 2000, 0, 0
    with caplog.at_level(logging.INFO):
        await loop.sock_sendall(guest_sock, wire.encode_hello(Role.GUEST, reply=False))
        with pytest.raises(OSError):  # the host hangs up on us
            while sent < 1_000_000:
                await asyncio.wait_for(
                    loop.sock_sendall(guest_sock, _cheap_frames(kind, sent, batch)), 10)
                sent += batch
                if not host.closed.is_set():
                    peak = max(peak, h_writer.transport.get_write_buffer_size())
        await asyncio.wait_for(runner, 10)
    guest_sock.close()
    assert host.closed.is_set()
    assert "stopped reading" in host.close_reason
    assert sent < 1_000_000
    _, high = h_writer.transport.get_write_buffer_limits()
    assert peak <= mux.MAX_QUEUED_CONTROL + high + 64
    notices = [r for r in caplog.records if "not reading" in r.getMessage()]
    assert len(notices) == 1 and notices[0].getMessage().startswith("vm testvm: ")
    # the log stays short however many frames were sent
    assert len(caplog.records) <= 15


async def test_violation_warnings_are_rate_limited_with_a_count(
    pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        pair.guest_writer.write(wire.encode_frame(FrameType.DATA, 1_000_000, b"x") * 500)
        await asyncio.sleep(0.2)
        assert await echo_round_trip(pair.host, b"fine") == b"fine"
        await pair.host.close()
    messages = [r.getMessage() for r in caplog.records if r.name == "vmsilo.channel.mux"]
    violations = [m for m in messages if m.startswith("vm testvm: protocol violation")]
    assert len(violations) == 10
    assert "vm testvm: 490 similar messages suppressed (at most 10 per 60 s)" in messages


def test_warning_limiter_budget_renews_each_period() -> None:
    now = [0.0]
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("test.limiter")
    logger.addHandler(Collect())
    logger.propagate = False
    limiter = mux.WarningLimiter(logger, "vm a", burst=2, period=10.0, clock=lambda: now[0])
    for i in range(5):
        limiter.log(logging.WARNING, "bad frame %d", i)
    assert records == ["vm a: bad frame 0", "vm a: bad frame 1"]
    now[0] = 10.0
    limiter.log(logging.WARNING, "bad frame %d", 5)
    assert records[2:] == ["vm a: 3 similar messages suppressed (at most 2 per 10 s)",
                           "vm a: bad frame 5"]
    limiter.flush()
    assert len(records) == 4


async def test_a_reset_for_an_unknown_stream_is_not_answered(
    pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    """Both ends answered violations with RESET, and a RESET for an unknown stream is one: a
    single such frame bounced between them for ever (tens of thousands of frames a second)."""
    with caplog.at_level(logging.WARNING):
        pair.guest_writer.write(wire.encode_reason(FrameType.RESET, 1_000_000, "x"))
        await asyncio.sleep(0.3)
    messages = [r.getMessage() for r in caplog.records if r.name == "vmsilo.channel.mux"]
    assert [m.split(":")[0] for m in messages] == ["vm testvm"]
    assert await echo_round_trip(pair.host, b"fine") == b"fine"
