"""Mux frames: header checks, payload checks, incremental decoding and HELLO hunting."""

from __future__ import annotations

import pytest

from vmsilo.protocol import mux as wire
from vmsilo.protocol.errors import MuxConnectionError, ProtocolError
from vmsilo.protocol.mux import Frame, FrameType, MuxDecoder, Role


def test_frames_round_trip_through_the_decoder_in_small_pieces() -> None:
    frames = [
        wire.encode_hello(Role.HOST, reply=False),
        wire.encode_open(1, 5000, wire.DEFAULT_WINDOW),
        wire.encode_accept(1, wire.MIN_WINDOW),
        wire.encode_frame(FrameType.DATA, 1, b"payload" * 1000),
        wire.encode_credit(1, 4096),
        wire.encode_frame(FrameType.EOF, 1),
        wire.encode_reason(FrameType.RESET, 3, "bye"),
    ]
    data = b"".join(frames)
    decoder = MuxDecoder()
    decoded: list[Frame] = []
    for i in range(0, len(data), 7):
        decoder.feed(data[i : i + 7])
        while (frame := decoder.next_frame()) is not None:
            decoded.append(frame)
    assert [f.type for f in decoded] == [
        FrameType.HELLO,
        FrameType.OPEN,
        FrameType.ACCEPT,
        FrameType.DATA,
        FrameType.CREDIT,
        FrameType.EOF,
        FrameType.RESET,
    ]
    assert wire.parse_hello(decoded[0].payload) == wire.Hello(Role.HOST, False, 0)
    assert wire.parse_open(decoded[1].payload) == wire.Open(5000, wire.DEFAULT_WINDOW)
    assert wire.parse_accept(decoded[2].payload) == wire.MIN_WINDOW
    assert decoded[3].payload == b"payload" * 1000
    assert wire.parse_credit(decoded[4].payload) == 4096
    assert wire.parse_reason(decoded[6].payload) == "bye"
    assert decoder.buffered == 0


@pytest.mark.parametrize(
    "header",
    [
        wire.HEADER.pack(b"XY", 1, FrameType.DATA, 1, 1),
        wire.HEADER.pack(wire.MAGIC, 2, FrameType.DATA, 1, 1),
        wire.HEADER.pack(wire.MAGIC, 1, 0, 1, 1),
        wire.HEADER.pack(wire.MAGIC, 1, 99, 1, 1),
        wire.HEADER.pack(wire.MAGIC, 1, FrameType.DATA, 1, wire.MAX_PAYLOAD + 1),
        wire.HEADER.pack(wire.MAGIC, 1, FrameType.DATA, 0, 1),
        wire.HEADER.pack(wire.MAGIC, 1, FrameType.HELLO, 5, 2),
        wire.HEADER.pack(wire.MAGIC, 1, FrameType.HELLO, 0, 3),
    ],
)
def test_bad_headers_break_the_connection(header: bytes) -> None:
    with pytest.raises(MuxConnectionError):
        wire.parse_header(header)


@pytest.mark.parametrize(
    ("parse", "payload"),
    [
        (wire.parse_open, b"\0" * 7),
        (wire.parse_open, bytes(8)),  # port 0
        (wire.parse_open, b"\0\0\0\1\0\0\0\1"),  # window below the minimum
        (wire.parse_open, b"\0\0\0\1\xff\xff\xff\xff"),  # window above the maximum
        (wire.parse_accept, b"\0\0"),
        (wire.parse_credit, bytes(4)),
        (wire.parse_credit, b"\xff\xff\xff\xff"),
        (wire.parse_reason, b"x" * (wire.MAX_REASON + 1)),
    ],
)
def test_bad_payloads_are_stream_errors(parse: object, payload: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        parse(payload)  # type: ignore[operator]
    assert not isinstance(info.value, MuxConnectionError)


def test_payload_size_table() -> None:
    with pytest.raises(ProtocolError):
        wire.check_payload_size(Frame(FrameType.EOF, 1, b"x"))
    with pytest.raises(ProtocolError):
        wire.check_payload_size(Frame(FrameType.DATA, 1, b""))
    wire.check_payload_size(Frame(FrameType.DATA, 1, b"x" * wire.MAX_DATA))


def test_hello_validation() -> None:
    for payload in (b"\x03\x00" + bytes(8), b"\x01\x02" + bytes(8), b"\x01\x00", b"\x01"):
        with pytest.raises(MuxConnectionError):
            wire.parse_hello(payload)


def test_reason_is_made_safe_to_log() -> None:
    assert wire.parse_reason(b"bad\x1b[31m\xffend") == "bad?[31m?end"


def test_hunting_skips_garbage_and_false_starts() -> None:
    decoder = MuxDecoder()
    fake = wire.HELLO_HEADER_PREFIX + b"\x07\x07" + bytes(8)  # right header, invalid role
    decoder.feed(b"junk" * 100 + fake + wire.HELLO_HEADER_PREFIX[:5])
    assert decoder.hunt_hello() is None
    decoder.feed(wire.HELLO_HEADER_PREFIX[5:] + b"\x02\x01" + (7).to_bytes(8, "big"))
    decoder.feed(wire.encode_frame(FrameType.EOF, 2))
    assert decoder.hunt_hello() == wire.Hello(Role.GUEST, True, 7)
    assert decoder.next_frame() == Frame(FrameType.EOF, 2, b"")


def test_hunting_keeps_memory_bounded() -> None:
    decoder = MuxDecoder()
    for _ in range(100):
        decoder.feed(b"\0" * 10000)
        assert decoder.hunt_hello() is None
        assert decoder.buffered < wire.HEADER_SIZE
