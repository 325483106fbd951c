"""Frames of the stream multiplexer carried over one virtio-serial port.

Every frame is a 12-byte header — magic ``VX``, version, type, stream id (u32), payload length
(u32), all big-endian — followed by the payload. ``FRAME_TYPES`` is the table of types with
their payload size limits. Header faults (bad magic or version, unknown type, length over the
type's cap, a stream frame on stream 0) break the framing, so they raise
``MuxConnectionError`` and the whole connection goes; a bad payload inside a well-framed
frame raises ``ProtocolError`` and costs only its stream. ``MuxDecoder`` is an incremental,
allocation-capped parser that can also hunt for a HELLO to resynchronise after garbage.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

from vmsilo.protocol.errors import MuxConnectionError, ProtocolError

MAGIC = b"VX"
VERSION = 1
HEADER = struct.Struct(">2sBBII")
HEADER_SIZE = HEADER.size
MAX_DATA = 64 * 1024
MAX_REASON = 256
MAX_WINDOW = 16 * 1024 * 1024
MIN_WINDOW = MAX_DATA
DEFAULT_WINDOW = 1024 * 1024
MAX_STREAM_ID = 2**32 - 1


# role, flags (bit 0: reply), the sender's session id
HELLO_PAYLOAD = struct.Struct("!BBQ")


class FrameType(IntEnum):
    HELLO = 1
    OPEN = 2
    ACCEPT = 3
    REFUSE = 4
    DATA = 5
    CREDIT = 6
    EOF = 7
    RESET = 8


class Role(IntEnum):
    HOST = 1
    GUEST = 2


@dataclass(frozen=True)
class FrameSpec:
    min_len: int
    max_len: int
    # HELLO belongs to the connection (stream 0); every other type to a stream (id >= 1).
    connection_level: bool = False


FRAME_TYPES: dict[int, FrameSpec] = {
    FrameType.HELLO: FrameSpec(HELLO_PAYLOAD.size, HELLO_PAYLOAD.size, connection_level=True),
    FrameType.OPEN: FrameSpec(8, 8),
    FrameType.ACCEPT: FrameSpec(4, 4),
    FrameType.REFUSE: FrameSpec(0, MAX_REASON),
    FrameType.DATA: FrameSpec(1, MAX_DATA),
    FrameType.CREDIT: FrameSpec(4, 4),
    FrameType.EOF: FrameSpec(0, 0),
    FrameType.RESET: FrameSpec(0, MAX_REASON),
}
# The framing cap: a length beyond any type's maximum can never be valid.
MAX_PAYLOAD = max(spec.max_len for spec in FRAME_TYPES.values())


class Frame(NamedTuple):
    type: FrameType
    stream_id: int
    payload: bytes


class Header(NamedTuple):
    type: FrameType
    stream_id: int
    length: int


def parse_header(untrusted_header: bytes) -> Header:
    """Check a 12-byte header. Lengths outside the type's range that still fit the framing
    cap are left to the payload parsers (a stream-level fault)."""
    magic, version, untrusted_type, untrusted_sid, untrusted_len = HEADER.unpack(untrusted_header)
    if magic != MAGIC:
        raise MuxConnectionError(f"bad frame magic {magic!r}")
    if version != VERSION:
        raise MuxConnectionError(f"unsupported mux version {version}")
    if untrusted_type not in FRAME_TYPES:
        raise MuxConnectionError(f"unknown frame type {untrusted_type}")
    spec = FRAME_TYPES[untrusted_type]
    if untrusted_len > MAX_PAYLOAD:
        raise MuxConnectionError(f"frame length {untrusted_len} over the cap {MAX_PAYLOAD}")
    if spec.connection_level != (untrusted_sid == 0):
        raise MuxConnectionError(
            f"{FrameType(untrusted_type).name} frame on stream {untrusted_sid}"
        )
    if spec.connection_level and not spec.min_len <= untrusted_len <= spec.max_len:
        raise MuxConnectionError(f"HELLO payload of {untrusted_len} bytes")
    return Header(FrameType(untrusted_type), untrusted_sid, untrusted_len)


def check_payload_size(frame: Frame) -> None:
    spec = FRAME_TYPES[frame.type]
    if not spec.min_len <= len(frame.payload) <= spec.max_len:
        raise ProtocolError(
            f"{frame.type.name} payload of {len(frame.payload)} bytes, "
            f"allowed {spec.min_len}..{spec.max_len}"
        )


def encode_frame(frame_type: FrameType, stream_id: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(MAGIC, VERSION, frame_type, stream_id, len(payload)) + payload


# --- payloads -------------------------------------------------------------------------------

_U32 = struct.Struct(">I")
_OPEN = struct.Struct(">II")


class Hello(NamedTuple):
    role: Role
    reply: bool
    # Random per connection instance of the sender. A second HELLO with the session we already
    # know is a duplicate (both ends greeted at once, e.g. after a host reconnect), not a
    # restart of the peer, and must not reset the streams opened in between.
    session: int = 0



def encode_hello(role: Role, *, reply: bool, session: int = 0) -> bytes:
    return encode_frame(FrameType.HELLO, 0, HELLO_PAYLOAD.pack(role, 1 if reply else 0, session))


def parse_hello(untrusted_payload: bytes) -> Hello:
    if len(untrusted_payload) != HELLO_PAYLOAD.size:
        raise MuxConnectionError(f"HELLO payload must be {HELLO_PAYLOAD.size} bytes")
    untrusted_role, untrusted_flags, session = HELLO_PAYLOAD.unpack(untrusted_payload)
    if untrusted_role not in (Role.HOST, Role.GUEST):
        raise MuxConnectionError(f"HELLO with unknown role {untrusted_role}")
    if untrusted_flags not in (0, 1):
        raise MuxConnectionError(f"HELLO with unknown flags {untrusted_flags:#x}")
    return Hello(Role(untrusted_role), bool(untrusted_flags), session)


HELLO_HEADER_PREFIX = HEADER.pack(MAGIC, VERSION, FrameType.HELLO, 0, HELLO_PAYLOAD.size)


def _check_window(untrusted_window: int) -> int:
    if not MIN_WINDOW <= untrusted_window <= MAX_WINDOW:
        raise ProtocolError(f"window {untrusted_window} outside {MIN_WINDOW}..{MAX_WINDOW}")
    return untrusted_window


class Open(NamedTuple):
    port: int
    window: int


def encode_open(stream_id: int, port: int, window: int) -> bytes:
    return encode_frame(FrameType.OPEN, stream_id, _OPEN.pack(port, window))


def parse_open(untrusted_payload: bytes) -> Open:
    if len(untrusted_payload) != _OPEN.size:
        raise ProtocolError("OPEN payload must be 8 bytes")
    untrusted_port, untrusted_window = _OPEN.unpack(untrusted_payload)
    if not 1 <= untrusted_port <= 0xFFFFFFFE:
        raise ProtocolError(f"OPEN for invalid port {untrusted_port}")
    return Open(untrusted_port, _check_window(untrusted_window))


def encode_accept(stream_id: int, window: int) -> bytes:
    return encode_frame(FrameType.ACCEPT, stream_id, _U32.pack(window))


def parse_accept(untrusted_payload: bytes) -> int:
    if len(untrusted_payload) != 4:
        raise ProtocolError("ACCEPT payload must be 4 bytes")
    return _check_window(_U32.unpack(untrusted_payload)[0])


def encode_credit(stream_id: int, increment: int) -> bytes:
    return encode_frame(FrameType.CREDIT, stream_id, _U32.pack(increment))


def parse_credit(untrusted_payload: bytes) -> int:
    if len(untrusted_payload) != 4:
        raise ProtocolError("CREDIT payload must be 4 bytes")
    untrusted_increment: int = _U32.unpack(untrusted_payload)[0]
    if not 1 <= untrusted_increment <= MAX_WINDOW:
        raise ProtocolError(f"CREDIT increment {untrusted_increment} outside 1..{MAX_WINDOW}")
    return untrusted_increment


def encode_reason(frame_type: FrameType, stream_id: int, reason: str) -> bytes:
    data = reason.encode("utf-8", "replace")[:MAX_REASON]
    return encode_frame(frame_type, stream_id, data)


def parse_reason(untrusted_payload: bytes) -> str:
    """A human-readable reason, reduced to printable ASCII so that it is safe to log."""
    if len(untrusted_payload) > MAX_REASON:
        raise ProtocolError("reason too long")
    text = untrusted_payload.decode("ascii", "replace")
    return "".join(c if c.isprintable() and c.isascii() else "?" for c in text)


# --- incremental decoding -------------------------------------------------------------------


class MuxDecoder:
    """Turns a byte stream into frames. Holds at most one header plus one capped payload of
    undecoded data beyond what ``feed`` was last given, so memory stays bounded."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: bytes) -> None:
        if self._pos and self._pos * 2 >= len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None if more bytes are needed."""
        if self.buffered < HEADER_SIZE:
            return None
        header = parse_header(bytes(self._buf[self._pos : self._pos + HEADER_SIZE]))
        end = self._pos + HEADER_SIZE + header.length
        if end > len(self._buf):
            return None
        payload = bytes(self._buf[self._pos + HEADER_SIZE : end])
        self._pos = end
        return Frame(header.type, header.stream_id, payload)

    def hunt_hello(self) -> Hello | None:
        """Discard bytes up to the first complete, valid HELLO and return it; None if none is
        buffered yet (keeping a possible partial HELLO at the tail)."""
        while True:
            index = self._buf.find(HELLO_HEADER_PREFIX, self._pos)
            if index < 0:
                keep = min(self.buffered, len(HELLO_HEADER_PREFIX) - 1)
                self._pos = len(self._buf) - keep
                return None
            self._pos = index
            end = index + HEADER_SIZE + HELLO_PAYLOAD.size
            if len(self._buf) < end:
                return None
            payload = bytes(self._buf[index + HEADER_SIZE : end])
            try:
                hello = parse_hello(payload)
            except MuxConnectionError:
                self._pos = index + 1
                continue
            self._pos = end
            return hello
