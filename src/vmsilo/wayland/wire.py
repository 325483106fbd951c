"""The Wayland wire format: one message = header (object id, opcode, size) + arguments.

Arguments are 32-bit words in the host's byte order; strings and arrays carry a length and are
padded to 4 bytes; file descriptors travel out of band (SCM_RIGHTS) and are taken, in order,
from the connection's queue. Decoding is strict: a string must end in its one NUL, lengths
must fit in the message, ids must be in range. Anything else is a ``WireError``, which the
filter answers by closing the VM's connection.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass
from typing import Any

from vmsilo.protocol.errors import ProtocolError
from vmsilo.wayland.protocols import Message

HEADER = struct.Struct("=II")
WORD = struct.Struct("=I")
SIGNED = struct.Struct("=i")
HEADER_SIZE = 8
# libwayland's own limit for one message (WL_MAX_MESSAGE_SIZE); compositors refuse larger.
MAX_MESSAGE = 4096
# Ids the client allocates are below this; the compositor's own (e.g. clipboard offers) above.
SERVER_ID_START = 0xFF000000


class WireError(ProtocolError, ValueError):
    """Bytes that are not a well-formed Wayland message."""


@dataclass(frozen=True)
class NewId:
    """A ``new_id`` argument. ``interface``/``version`` are set only for untyped new_ids
    (``wl_registry.bind``), which carry them on the wire."""

    id: int
    interface: str | None = None
    version: int | None = None


@dataclass(frozen=True)
class Fd:
    fd: int


def split_header(data: bytes | memoryview, offset: int = 0) -> tuple[int, int, int]:
    """(object id, opcode, size) of the message at ``offset``; size not yet checked."""
    object_id, word = HEADER.unpack_from(data, offset)
    return object_id, word & 0xFFFF, word >> 16


def check_size(size: int) -> None:
    if size < HEADER_SIZE or size > MAX_MESSAGE or size % 4:
        raise WireError(f"message size {size} is not a multiple of 4 in 8..{MAX_MESSAGE}")


def _padded(length: int) -> int:
    return (length + 3) & ~3


def decode_args(message: Message, body: memoryview, fds: deque[int]) -> list[Any]:
    """The arguments of ``message`` from ``body`` (the bytes after the header). File
    descriptors are taken from ``fds``; the caller has checked there are enough."""
    args: list[Any] = []
    pos = 0
    end = len(body)

    def word() -> int:
        nonlocal pos
        if pos + 4 > end:
            raise WireError(f"{message.name}: message ends inside an argument")
        value: int = WORD.unpack_from(body, pos)[0]
        pos += 4
        return value

    def blob(what: str) -> bytes | None:
        nonlocal pos
        length = word()
        if length == 0:
            return None
        if length > end - pos:
            raise WireError(f"{message.name}: {what} of {length} bytes overruns the message")
        data = bytes(body[pos:pos + length])
        pos += _padded(length)
        if pos > end:
            raise WireError(f"{message.name}: {what} padding overruns the message")
        return data

    def string(arg_name: str, nullable: bool) -> str | None:
        data = blob(f"string {arg_name}")
        if data is None:
            if not nullable:
                raise WireError(f"{message.name}: string {arg_name} may not be null")
            return None
        if data[-1] != 0 or 0 in data[:-1]:
            raise WireError(f"{message.name}: string {arg_name} is not one NUL-terminated string")
        return data[:-1].decode("utf-8", errors="surrogateescape")

    for arg in message.args:
        if arg.type == "int" or arg.type == "fixed":
            (value,) = SIGNED.unpack(WORD.pack(word()))
            args.append(value)
        elif arg.type == "uint":
            args.append(word())
        elif arg.type == "object":
            object_id = word()
            if object_id == 0 and not arg.nullable:
                raise WireError(f"{message.name}: object {arg.name} may not be null")
            args.append(object_id)
        elif arg.type == "new_id":
            if arg.interface is None:
                interface = string(arg.name, False)
                version = word()
                object_id = word()
                args.append(NewId(object_id, interface, version))
            else:
                object_id = word()
                args.append(NewId(object_id))
            if object_id == 0:
                raise WireError(f"{message.name}: new id {arg.name} is 0")
        elif arg.type == "string":
            args.append(string(arg.name, arg.nullable))
        elif arg.type == "array":
            data = blob(f"array {arg.name}")
            args.append(data or b"")
        else:  # fd
            args.append(Fd(fds.popleft()))
    if pos != end:
        raise WireError(f"{message.name}: {end - pos} bytes left after the last argument")
    return args


def encode(object_id: int, opcode: int, message: Message,
           args: list[Any]) -> tuple[bytes, list[int]]:
    """A message and the file descriptors to send with it."""
    parts: list[bytes] = []
    fds: list[int] = []

    def blob(data: bytes) -> None:
        parts.append(WORD.pack(len(data)))
        parts.append(data + b"\0" * (_padded(len(data)) - len(data)))

    def string(value: str | None) -> None:
        if value is None:
            parts.append(WORD.pack(0))
        else:
            blob(value.encode("utf-8", errors="surrogateescape") + b"\0")

    for arg, value in zip(message.args, args, strict=True):
        if arg.type in ("int", "fixed"):
            parts.append(SIGNED.pack(value))
        elif arg.type in ("uint", "object"):
            parts.append(WORD.pack(value))
        elif arg.type == "new_id":
            if arg.interface is None:
                string(value.interface)
                parts.append(WORD.pack(value.version))
            parts.append(WORD.pack(value.id))
        elif arg.type == "string":
            string(value)
        elif arg.type == "array":
            blob(value)
        else:
            fds.append(value.fd)
    body = b"".join(parts)
    size = HEADER_SIZE + len(body)
    check_size(size)
    return HEADER.pack(object_id, (size << 16) | opcode) + body, fds
