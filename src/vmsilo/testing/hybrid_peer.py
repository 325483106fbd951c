"""A stand-in for cloud-hypervisor's hybrid vsock socket, for tests on a machine without a VM.

``HybridVsockPeer`` listens on a unix socket, reads ``CONNECT <port>\\n``, and if a handler is
registered for the port answers ``OK <n>\\n`` and hands the connection to it; otherwise it
closes the connection, as cloud-hypervisor does when nothing listens in the guest. ``reply``
replaces the ``OK`` line to test a misbehaving peer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType

ConnectionHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class HybridVsockPeer:
    def __init__(
        self,
        path: Path,
        handlers: dict[int, ConnectionHandler],
        *,
        reply: bytes | None = None,
    ) -> None:
        self.path = path
        self.handlers = handlers
        self.reply = reply
        self.requested_ports: list[int] = []
        self._server: asyncio.Server | None = None
        self._next_local_port = 1024

    async def __aenter__(self) -> HybridVsockPeer:
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            words = line.split()
            if len(words) != 2 or words[0] != b"CONNECT" or not words[1].isdigit():
                return
            port = int(words[1])
            self.requested_ports.append(port)
            handler = self.handlers.get(port)
            if handler is None:
                return
            self._next_local_port += 1
            writer.write(
                self.reply if self.reply is not None else b"OK %d\n" % self._next_local_port
            )
            await writer.drain()
            await handler(reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
