"""The stream interface shared by every transport, and its socket-backed implementation.

A ``Stream`` reads with ``read``/``readexactly`` (``b""`` / ``IncompleteReadError`` at the
peer's EOF), writes with ``write`` (which waits while the peer is not consuming), half-closes
with ``write_eof`` and ends with ``close``. ``SocketStream`` adapts asyncio's reader/writer
pair, used for vsock and hybrid vsock connections.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol


class ChannelError(Exception):
    """A stream could not be opened or broke."""


class StreamRefusedError(ChannelError):
    """The guest has nothing listening on the requested port."""

    def __init__(self, port: int, reason: str) -> None:
        self.port = port
        self.reason = reason
        super().__init__(f"port {port} refused the stream: {reason}")


class StreamResetError(ChannelError):
    """The stream was torn down (by the peer, a protocol violation, or a lost connection)."""


class Stream(Protocol):
    async def read(self, n: int = -1) -> bytes: ...

    async def readexactly(self, n: int) -> bytes: ...

    async def write(self, data: bytes) -> None: ...

    async def write_eof(self) -> None: ...

    async def close(self) -> None: ...


class SocketStream:
    """A ``Stream`` over a connected socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self, n: int = -1) -> bytes:
        try:
            return await self._reader.read(n if n > 0 else 256 * 1024)
        except ConnectionError as exc:
            raise StreamResetError(str(exc)) from exc

    async def readexactly(self, n: int) -> bytes:
        try:
            return await self._reader.readexactly(n)
        except ConnectionError as exc:
            raise StreamResetError(str(exc)) from exc

    async def write(self, data: bytes) -> None:
        try:
            self._writer.write(data)
            await self._writer.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise StreamResetError(str(exc)) from exc

    async def write_eof(self) -> None:
        try:
            if self._writer.can_write_eof():
                self._writer.write_eof()
        except (ConnectionError, OSError) as exc:
            raise StreamResetError(str(exc)) from exc

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()


SPLICE_CHUNK = 256 * 1024


async def splice_sockets(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         other_reader: asyncio.StreamReader,
                         other_writer: asyncio.StreamWriter) -> None:
    """Copy both ways between two socket connections until either side ends, then close the
    other connection (the caller owns ``writer``)."""

    async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await src.read(SPLICE_CHUNK):
                dst.write(data)
                await dst.drain()

    tasks = [asyncio.create_task(pump(reader, other_writer)),
             asyncio.create_task(pump(other_reader, writer))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        other_writer.close()
