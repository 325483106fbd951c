"""The stream broker's messages: a helper (a host half of a guest service) ↔ vmsilod.

vmsilod gives each helper process one end of a ``SOCK_SEQPACKET`` socket pair, inherited as a
descriptor, instead of its control socket. On it the helper can do exactly one thing: ask for
a new stream to the one guest port it serves, of its own VM. Each record is one message:

    request (helper → vmsilod), exactly 8 bytes:  b"OPEN" | port (u32, big-endian)
    reply (vmsilod → helper):  code (u8) | UTF-8 text (at most MAX_TEXT bytes)

``OK`` carries one descriptor (``SCM_RIGHTS``, unix(7)): a connected stream socket whose other
end vmsilod splices to the guest stream. ``RETRY`` means the port cannot be opened now (the
guest half is not up yet, the VM is starting or stopping): try again later. ``BUSY`` means the
helper holds as many streams as it may: try again once one has ended. vmsilod closing the
broker means the helper is no longer wanted: it ends.

Requests come from a process that parses guest data and may be compromised: vmsilod decodes
them with ``decode_request`` (anything but a well-formed request for the helper's own port,
including a descriptor sent along, is a ``BrokerViolationError``: logged with the VM's name, broker
closed). Replies come from vmsilod. ``BrokerClient`` is the helper's side.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from enum import IntEnum

from vmsilo.protocol.errors import ProtocolError

MAGIC = b"OPEN"
REQUEST = struct.Struct(">4sI")
MAX_TEXT = 512
# Receive one byte more than the largest valid record: a longer one shows as MSG_TRUNC.
MAX_RECORD = max(REQUEST.size, 1 + MAX_TEXT) + 1


class Reply(IntEnum):
    OK = 0
    RETRY = 1
    BUSY = 2


class BrokerViolationError(ProtocolError):
    """The helper sent something the broker does not allow; its broker is closed."""


class BrokerClosedError(Exception):
    """vmsilod closed the broker: the helper is to end."""


class StreamUnavailableError(Exception):
    """vmsilod could not give a stream now (``RETRY`` or ``BUSY``); try again later."""

    def __init__(self, code: Reply, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"{code.name.lower()}: {reason}")


# -- codec ------------------------------------------------------------------------------------


def encode_request(port: int) -> bytes:
    return REQUEST.pack(MAGIC, port)


def decode_request(untrusted_record: bytes, untrusted_fds: list[int], flags: int) -> int:
    """The port a request asks for. The caller closes ``untrusted_fds`` (any descriptor sent
    along is itself a violation). Raises ``BrokerViolationError``."""
    if untrusted_fds:
        raise BrokerViolationError(f"the request carried {len(untrusted_fds)} descriptor(s)")
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        raise BrokerViolationError("the request was longer than any valid one")
    if len(untrusted_record) != REQUEST.size:
        raise BrokerViolationError(f"a request is {REQUEST.size} bytes, not "
                              f"{len(untrusted_record)}")
    magic, port = REQUEST.unpack(untrusted_record)
    if magic != MAGIC:
        raise BrokerViolationError(f"unknown request {magic!r}")
    return int(port)


def encode_reply(code: Reply, text: str = "") -> bytes:
    return bytes((code,)) + text.encode()[:MAX_TEXT]


def decode_reply(record: bytes, fds: list[int]) -> tuple[Reply, str]:
    """A reply from vmsilod; an ``OK`` carries exactly one descriptor. ``ProtocolError`` if
    the record is not one (the caller closes ``fds``)."""
    if not record:
        raise ProtocolError("empty reply from vmsilod")
    try:
        code = Reply(record[0])
    except ValueError:
        raise ProtocolError(f"unknown reply code {record[0]} from vmsilod") from None
    if len(fds) != (1 if code is Reply.OK else 0):
        raise ProtocolError(f"a {code.name} reply with {len(fds)} descriptor(s)")
    return code, record[1:].decode(errors="replace")


# -- I/O on a non-blocking SOCK_SEQPACKET socket (both sides) ---------------------------------


async def _ready(sock: socket.socket, writable: bool) -> None:
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not waiter.done():
            waiter.set_result(None)

    fd = sock.fileno()
    (loop.add_writer if writable else loop.add_reader)(fd, wake)
    try:
        await waiter
    finally:
        (loop.remove_writer if writable else loop.remove_reader)(fd)


async def receive(sock: socket.socket, max_fds: int) -> tuple[bytes, list[int], int]:
    """One record, the descriptors that came with it (close-on-exec) and the recvmsg flags;
    ``b""`` at the peer's end."""
    while True:
        try:
            record, fds, flags, _ = socket.recv_fds(sock, MAX_RECORD, max_fds,
                                                   socket.MSG_CMSG_CLOEXEC)
            return record, fds, flags
        except (BlockingIOError, InterruptedError):
            await _ready(sock, writable=False)


async def send(sock: socket.socket, record: bytes, fds: list[int] | None = None) -> None:
    while True:
        try:
            socket.send_fds(sock, [record], fds or [])
            return
        except (BlockingIOError, InterruptedError):
            await _ready(sock, writable=True)


def close_fds(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


# -- the helper's side ------------------------------------------------------------------------


class BrokerClient:
    """The helper's end of its broker (the inherited descriptor ``fd``). ``open`` asks for one
    stream at a time (requests and replies pair up in order)."""

    def __init__(self, fd: int) -> None:
        self.sock = socket.socket(fileno=fd)
        self.sock.setblocking(False)
        self._lock = asyncio.Lock()

    async def open(self, port: int) -> socket.socket:
        """A connected stream socket to ``port`` of the helper's VM. Raises
        ``StreamUnavailableError`` (try again later) or ``BrokerClosedError`` (end)."""
        async with self._lock:
            try:
                await send(self.sock, encode_request(port))
                record, fds, _ = await receive(self.sock, 1)
            except (BrokenPipeError, ConnectionError) as exc:
                raise BrokerClosedError(str(exc)) from None
            if not record and not fds:
                raise BrokerClosedError("vmsilod closed the broker")
            try:
                code, text = decode_reply(record, fds)
            except ProtocolError:
                close_fds(fds)
                raise
        if code is not Reply.OK:
            raise StreamUnavailableError(code, text)
        stream = socket.socket(fileno=fds[0])
        stream.setblocking(False)
        return stream

    def close(self) -> None:
        self.sock.close()
