"""The exec protocol spoken on guest port 5000.

Each frame is a 5-byte header — payload length (u32, big-endian) and a type byte — and a
payload. ``MESSAGES`` is the table of types: which side may send each, whether its payload is
raw bytes (stdin/stdout/stderr chunks) or a JSON object checked against a ``Schema``, and its
size cap. On every stream the guest first sends ``AgentHello``; the host then sends one
request (``ExecRequest``, ``StatusRequest`` or ``PoweroffRequest``) and, for an exec, stdin
chunks, ``StdinEof``, ``SignalRequest`` and ``Resize``; the guest answers with ``Stdout`` /
``Stderr`` chunks and exactly one ``ExitStatus`` (or an ``ErrorReply``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import Enum
from typing import Any, NamedTuple, Protocol

from vmsilo.protocol.errors import ProtocolError
from vmsilo.protocol.mux import MAX_DATA
from vmsilo.protocol.schema import (
    Bool,
    Float,
    Int,
    Schema,
    Str,
    StrList,
    StrMap,
    decode,
    encode,
)

PROTOCOL_VERSION = 1
EXEC_PORT = 5000
HEADER = struct.Struct(">IB")
HEADER_SIZE = HEADER.size
# One stdout chunk plus its header fills one mux DATA frame exactly.
MAX_CHUNK = MAX_DATA - HEADER_SIZE
MAX_CONTROL = 1024 * 1024
MAX_SIGNAL = 64
_TIME_MAX = 2.0**40


class Direction(Enum):
    TO_GUEST = "to_guest"
    TO_HOST = "to_host"


# --- messages -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentHello:
    protocol: int
    agent_version: str
    boot_time: float


@dataclass(frozen=True)
class ExecRequest:
    argv: list[str]
    env: dict[str, str]
    cwd: str | None = None
    user: str | None = None
    tty: bool = False
    rows: int = 24
    cols: int = 80


@dataclass(frozen=True)
class ExitStatus:
    """How a command ended: an exit code, or the number of the signal that killed it."""

    code: int | None = None
    signal: int | None = None

    def shell_status(self) -> int:
        """The status a shell would report: the code, or 128 + the signal number."""
        if self.code is not None:
            return self.code
        assert self.signal is not None
        return 128 + self.signal


@dataclass(frozen=True)
class IdleReport:
    running: int
    last_ended: float | None
    boot_time: float


@dataclass(frozen=True)
class ErrorReply:
    message: str


@dataclass(frozen=True)
class SignalRequest:
    signal: int


@dataclass(frozen=True)
class Resize:
    rows: int
    cols: int


@dataclass(frozen=True)
class Stdin:
    data: bytes


@dataclass(frozen=True)
class Stdout:
    data: bytes


@dataclass(frozen=True)
class Stderr:
    data: bytes


@dataclass(frozen=True)
class StdinEof:
    pass


@dataclass(frozen=True)
class StatusRequest:
    pass


@dataclass(frozen=True)
class PoweroffRequest:
    pass


@dataclass(frozen=True)
class PoweroffAck:
    pass


def _one_of_code_or_signal(status: ExitStatus) -> None:
    if (status.code is None) == (status.signal is None):
        raise ProtocolError("ExitStatus: exactly one of 'code' and 'signal' must be set")


_USER_NAME = Str(max_len=32, min_len=1, pattern=r"[a-z_][a-z0-9_-]*\$?", nullable=True)
_DIMENSION = Int(0, 65535)

AGENT_HELLO = Schema(
    AgentHello,
    {
        "protocol": Int(1, 1000),
        "agent_version": Str(max_len=64),
        "boot_time": Float(0.0, _TIME_MAX),
    },
)
EXEC_REQUEST = Schema(
    ExecRequest,
    {
        "argv": StrList(Str(max_len=128 * 1024), max_items=4096, min_items=1),
        "env": StrMap(
            key=Str(max_len=256, min_len=1, pattern=r"[^=]+"),
            value=Str(max_len=128 * 1024),
            max_items=1024,
        ),
        "cwd": Str(max_len=4096, min_len=1, pattern=r"/.*", nullable=True),
        "user": _USER_NAME,
        "tty": Bool(),
        "rows": _DIMENSION,
        "cols": _DIMENSION,
    },
    optional=frozenset({"cwd", "user", "tty", "rows", "cols"}),
)
EXIT_STATUS = Schema(
    ExitStatus,
    {"code": Int(0, 255, nullable=True), "signal": Int(1, MAX_SIGNAL, nullable=True)},
    optional=frozenset({"code", "signal"}),
    invariant=_one_of_code_or_signal,
)
IDLE_REPORT = Schema(
    IdleReport,
    {
        "running": Int(0, 1_000_000),
        "last_ended": Float(0.0, _TIME_MAX, nullable=True),
        "boot_time": Float(0.0, _TIME_MAX),
    },
)
ERROR_REPLY = Schema(ErrorReply, {"message": Str(max_len=1024)})
SIGNAL_REQUEST = Schema(SignalRequest, {"signal": Int(1, MAX_SIGNAL)})
RESIZE = Schema(Resize, {"rows": _DIMENSION, "cols": _DIMENSION})


class Payload(Enum):
    JSON = "json"
    RAW = "raw"
    EMPTY = "empty"


class MessageSpec(NamedTuple):
    code: int
    cls: type[Any]
    direction: Direction
    payload: Payload
    max_len: int
    schema: Schema[Any] | None = None


_G, _H = Direction.TO_HOST, Direction.TO_GUEST

MESSAGES: tuple[MessageSpec, ...] = (
    MessageSpec(0x01, AgentHello, _G, Payload.JSON, 4096, AGENT_HELLO),
    MessageSpec(0x02, Stdout, _G, Payload.RAW, MAX_CHUNK),
    MessageSpec(0x03, Stderr, _G, Payload.RAW, MAX_CHUNK),
    MessageSpec(0x04, ExitStatus, _G, Payload.JSON, 256, EXIT_STATUS),
    MessageSpec(0x05, IdleReport, _G, Payload.JSON, 256, IDLE_REPORT),
    MessageSpec(0x06, ErrorReply, _G, Payload.JSON, 8192, ERROR_REPLY),
    MessageSpec(0x07, PoweroffAck, _G, Payload.EMPTY, 0),
    MessageSpec(0x10, ExecRequest, _H, Payload.JSON, MAX_CONTROL, EXEC_REQUEST),
    MessageSpec(0x11, Stdin, _H, Payload.RAW, MAX_CHUNK),
    MessageSpec(0x12, StdinEof, _H, Payload.EMPTY, 0),
    MessageSpec(0x13, SignalRequest, _H, Payload.JSON, 256, SIGNAL_REQUEST),
    MessageSpec(0x14, Resize, _H, Payload.JSON, 256, RESIZE),
    MessageSpec(0x15, StatusRequest, _H, Payload.EMPTY, 0),
    MessageSpec(0x16, PoweroffRequest, _H, Payload.EMPTY, 0),
)
_BY_CODE = {spec.code: spec for spec in MESSAGES}
_BY_CLASS = {spec.cls: spec for spec in MESSAGES}

Message = Any  # one of the message classes above


def encode_message(message: Message) -> bytes:
    spec = _BY_CLASS[type(message)]
    if spec.payload is Payload.RAW:
        payload: bytes = message.data
    elif spec.payload is Payload.EMPTY:
        payload = b""
    else:
        assert spec.schema is not None
        payload = encode(spec.schema, message)
    if len(payload) > spec.max_len:
        raise ValueError(f"{spec.cls.__name__} payload of {len(payload)} bytes over {spec.max_len}")
    return HEADER.pack(len(payload), spec.code) + payload


def parse_header(untrusted_header: bytes, direction: Direction) -> tuple[MessageSpec, int]:
    """Check a frame header against the table: known type, sent by the right side, payload
    length within the type's cap. Returns the spec and the payload length to read next."""
    untrusted_len, untrusted_code = HEADER.unpack(untrusted_header)
    spec = _BY_CODE.get(untrusted_code)
    if spec is None:
        raise ProtocolError(f"unknown exec frame type {untrusted_code:#x}")
    if spec.direction is not direction:
        raise ProtocolError(f"{spec.cls.__name__} may not be sent in this direction")
    if untrusted_len > spec.max_len:
        raise ProtocolError(
            f"{spec.cls.__name__} payload of {untrusted_len} bytes over the cap {spec.max_len}"
        )
    if spec.payload is Payload.RAW and untrusted_len == 0:
        raise ProtocolError(f"empty {spec.cls.__name__} chunk")
    return spec, untrusted_len


def decode_payload(spec: MessageSpec, untrusted_payload: bytes) -> Message:
    if spec.payload is Payload.RAW:
        return spec.cls(untrusted_payload)
    if spec.payload is Payload.EMPTY:
        return spec.cls()
    assert spec.schema is not None
    return decode(spec.schema, untrusted_payload)


class ByteSource(Protocol):
    async def readexactly(self, n: int) -> bytes: ...


async def read_message(stream: ByteSource, direction: Direction) -> Message:
    """Read and validate one frame. Raises ``ProtocolError`` on a violation and
    ``asyncio.IncompleteReadError`` if the stream ends (at or inside a frame)."""
    spec, length = parse_header(await stream.readexactly(HEADER_SIZE), direction)
    untrusted_payload = await stream.readexactly(length) if length else b""
    return decode_payload(spec, untrusted_payload)


def decode_frames(untrusted_data: bytes, direction: Direction) -> tuple[list[Message], bytes]:
    """Decode every complete frame in ``untrusted_data``; return them and the unparsed tail.
    The pure counterpart of ``read_message``, for fuzzing and tests."""
    messages: list[Message] = []
    view = memoryview(untrusted_data)
    while len(view) >= HEADER_SIZE:
        spec, length = parse_header(bytes(view[:HEADER_SIZE]), direction)
        if len(view) < HEADER_SIZE + length:
            break
        messages.append(decode_payload(spec, bytes(view[HEADER_SIZE : HEADER_SIZE + length])))
        view = view[HEADER_SIZE + length :]
    return messages, bytes(view)
