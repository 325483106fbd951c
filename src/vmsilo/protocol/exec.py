"""The exec protocol spoken on guest port 5000.

Each frame is a 5-byte header — payload length (u32, big-endian) and a type byte — and a
payload. ``MESSAGES`` is the table of types: which side may send each, whether its payload is
raw bytes (stdin/stdout/stderr chunks) or a JSON object checked against a ``Schema``, and its
size cap. On every stream the guest first sends ``AgentHello``; the host then sends one
request (``ExecRequest``, ``StatusRequest`` or ``PoweroffRequest``) and, for an exec, stdin
chunks, ``StdinEof``, ``SignalRequest`` and ``Resize``; the guest answers with ``Stdout`` /
``Stderr`` chunks and exactly one ``ExitStatus`` (or an ``ErrorReply``).

A command's arguments, environment and working directory are bytes on Linux, and are carried
as bytes: in ``ExecRequest`` each is base64 text (RFC 4648 section 4, padded, canonical), so
the guest agent execs exactly the bytes the host was given, UTF-8 or not. Like ``execve``,
each of them is checked for NUL, and all arguments and environment entries together for size
(``MAX_ARGUMENTS``).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
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
    Kind,
    ListOf,
    MapOf,
    Schema,
    Str,
    decode,
    encode,
    parse_json,
    validate,
)

# 2: argv, env and cwd as base64 bytes (1 carried them as JSON text, UTF-8 only).
PROTOCOL_VERSION = 2
EXEC_PORT = 5000
HEADER = struct.Struct(">IB")
HEADER_SIZE = HEADER.size
# One stdout chunk plus its header fills one mux DATA frame exactly.
MAX_CHUNK = MAX_DATA - HEADER_SIZE
# All arguments and environment entries of one command, counted as execve counts them (each
# string with its NUL, an environment entry as NAME=VALUE). Linux allows a quarter of the stack
# limit, 2 MiB by default; this leaves the guest's login environment room.
MAX_ARGUMENTS = 1024 * 1024
MAX_ARG_LEN = 128 * 1024
MAX_ARGS = 4096
MAX_ENV = 1024
MAX_ENV_NAME = 256
MAX_CWD = 4096
# The encoded ExecRequest at its largest: base64 of MAX_ARGUMENTS (4 bytes per 3, plus padding
# and JSON punctuation per string) and the small fields; a test checks the worst case fits.
MAX_EXEC_REQUEST = 1536 * 1024
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


def _as_bytes(field: str, value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        try:
            return os.fsencode(value)
        except UnicodeEncodeError as exc:
            raise ValueError(f"ExecRequest {field}: {value!r} has no bytes form: {exc}") from None
    raise TypeError(f"ExecRequest {field}: expected bytes or str, got {type(value).__name__}")


@dataclass(frozen=True)
class ExecRequest:
    """A command to run: ``argv`` (at least one), environment entries to add to the login
    environment, the working directory (default: the user's home), the guest user (default:
    the agent's), and whether it gets a terminal of ``rows`` x ``cols``.

    ``argv``, ``env`` and ``cwd`` hold bytes; ``str`` given for them is converted as
    ``os.fsencode`` does (UTF-8, and ``surrogateescape`` gives back undecodable bytes, as in
    ``sys.argv``), so ``ExecRequest(argv=["ls"], env={})`` keeps working.
    """

    argv: list[bytes]
    env: dict[bytes, bytes]
    cwd: bytes | None = None
    user: str | None = None
    tty: bool = False
    rows: int = 24
    cols: int = 80

    def __post_init__(self) -> None:
        argv = [_as_bytes(f"argv[{i}]", a) for i, a in enumerate(self.argv)]
        env = {_as_bytes("env name", k): _as_bytes(f"env[{k!r}]", v) for k, v in self.env.items()}
        cwd = None if self.cwd is None else _as_bytes("cwd", self.cwd)
        object.__setattr__(self, "argv", argv)
        object.__setattr__(self, "env", env)
        object.__setattr__(self, "cwd", cwd)

    def argument_size(self) -> int:
        """Bytes of arguments and environment as ``execve`` counts them (see MAX_ARGUMENTS)."""
        return (sum(len(arg) + 1 for arg in self.argv)
                + sum(len(name) + len(value) + 2 for name, value in self.env.items()))


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


def _bad(name: str, why: str) -> ProtocolError:
    return ProtocolError(f"field {name!r}: {why}")


@dataclass(frozen=True)
class Base64Bytes(Kind):
    """Bytes sent as base64 text (RFC 4648 section 4, with padding). Only the canonical form
    is accepted (what ``b64encode`` gives), so each byte string has exactly one encoding.
    ``max_len`` and ``min_len`` count decoded bytes; NUL is never allowed (a C string on the
    guest); ``pattern`` is a regular expression over bytes the whole value must match."""

    max_len: int
    min_len: int = 0
    pattern: bytes | None = None
    nullable: bool = False

    def check(self, name: str, untrusted_value: object) -> object:
        if untrusted_value is None and self.nullable:
            return None
        if not isinstance(untrusted_value, str):
            raise _bad(name, f"expected base64 text, got {type(untrusted_value).__name__}")
        if len(untrusted_value) > 4 * ((self.max_len + 2) // 3):
            raise _bad(name, f"longer than {self.max_len} bytes")
        try:
            value = base64.b64decode(untrusted_value.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise _bad(name, "not base64 text") from None
        if base64.b64encode(value).decode("ascii") != untrusted_value:
            raise _bad(name, "not in canonical base64 form")
        if not self.min_len <= len(value) <= self.max_len:
            raise _bad(name, f"length {len(value)} outside {self.min_len}..{self.max_len}")
        if b"\x00" in value:
            raise _bad(name, "contains a NUL byte")
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise _bad(name, "does not match the allowed pattern")
        return value


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _exec_request_rules(request: ExecRequest) -> None:
    size = request.argument_size()
    if size > MAX_ARGUMENTS:
        raise ProtocolError(
            f"the command's arguments and environment take {size} bytes (each string counted "
            f"with its NUL); at most {MAX_ARGUMENTS} can be sent")


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
        "argv": ListOf(Base64Bytes(max_len=MAX_ARG_LEN), max_items=MAX_ARGS, min_items=1),
        "env": MapOf(
            key=Base64Bytes(max_len=MAX_ENV_NAME, min_len=1, pattern=rb"[^=]+"),
            value=Base64Bytes(max_len=MAX_ARG_LEN),
            max_items=MAX_ENV,
        ),
        "cwd": Base64Bytes(max_len=MAX_CWD, min_len=1, pattern=rb"(?s)/.*", nullable=True),
        "user": _USER_NAME,
        "tty": Bool(),
        "rows": _DIMENSION,
        "cols": _DIMENSION,
    },
    optional=frozenset({"cwd", "user", "tty", "rows", "cols"}),
    invariant=_exec_request_rules,
)


def encode_exec_request(request: ExecRequest) -> bytes:
    """The JSON payload of ``request``: every byte string as base64, then checked against
    ``EXEC_REQUEST`` exactly as the agent will check it. Raises ``ProtocolError`` naming the
    field (or the total size) the agent would refuse."""
    obj = {
        "argv": [_b64(arg) for arg in request.argv],
        "env": {_b64(name): _b64(value) for name, value in request.env.items()},
        "cwd": None if request.cwd is None else _b64(request.cwd),
        "user": request.user,
        "tty": request.tty,
        "rows": request.rows,
        "cols": request.cols,
    }
    payload = json.dumps(obj, separators=(",", ":")).encode()
    validate(EXEC_REQUEST, parse_json(payload))
    return payload
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
    MessageSpec(0x10, ExecRequest, _H, Payload.JSON, MAX_EXEC_REQUEST, EXEC_REQUEST),
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
    elif isinstance(message, ExecRequest):
        payload = encode_exec_request(message)
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
