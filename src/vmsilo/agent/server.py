"""How the agent meets the host: the virtio-serial multiplexer (on the guest's port device,
or on a unix socket for tests on the host) or kernel vsock.

On the multiplexer the agent accepts streams for every port: 5000 is served by the exec
service, any other port is spliced to the guest-local socket ``<ports_dir>/<port>.sock`` or
refused if nothing listens there. When the host connection breaks (the host disconnected, or
its framing was invalid) the agent drops every stream and waits for the next host HELLO.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from pathlib import Path

from vmsilo.agent.exec_service import ExecConfig, serve_exec_stream
from vmsilo.channel.guest_ports import port_socket_path
from vmsilo.channel.mux import MuxConnection, MuxStream, StreamHandler
from vmsilo.channel.stream import ChannelError, SocketStream, StreamRefusedError
from vmsilo.protocol.exec import EXEC_PORT
from vmsilo.protocol.mux import Role

log = logging.getLogger(__name__)

SPLICE_CHUNK = 64 * 1024
# How long to wait before reopening the port device after the host side went away; the
# device reports end-of-file continuously while no host is connected.
REOPEN_DELAY = 0.5


class Agent:
    def __init__(self, exec_config: ExecConfig, ports_dir: Path) -> None:
        self.exec_config = exec_config
        self.ports_dir = ports_dir
        self.current: MuxConnection | None = None

    async def accept(self, port: int) -> StreamHandler:
        if port == EXEC_PORT:
            return self._serve_exec
        try:
            reader, writer = await asyncio.open_unix_connection(
                port_socket_path(port, self.ports_dir)
            )
        except OSError:
            raise StreamRefusedError(port, f"nothing listens on port {port}") from None

        async def splice(stream: MuxStream) -> None:
            await splice_streams(stream, reader, writer)

        return splice

    async def _serve_exec(self, stream: MuxStream) -> None:
        await serve_exec_stream(stream, self.exec_config)

    async def run_mux(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = MuxConnection(
            reader, writer, role=Role.GUEST, peer_name="host", acceptor=self.accept
        )
        previous, self.current = self.current, conn
        if previous is not None:
            await previous.close()  # a new host connection replaces a dead one
        await conn.run()
        log.info("host connection ended: %s", conn.close_reason)

    async def serve_mux_socket(self, path: Path) -> None:
        """Listen on a unix socket and serve each host connection (tests on the host)."""
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        server = await asyncio.start_unix_server(self.run_mux, path=str(path))
        log.info("serving the multiplexer on %s", path)
        async with server:
            await server.serve_forever()

    async def serve_mux_device(self, path: Path) -> None:
        """Serve the multiplexer on the virtio-serial port device, reopening it whenever the
        host side goes away."""
        log.info("serving the multiplexer on %s", path)
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as exc:
                log.warning("cannot open %s: %s", path, exc)
                await asyncio.sleep(REOPEN_DELAY)
                continue
            reader, writer, read_transport = await _pipe_streams(fd)
            try:
                await self.run_mux(reader, writer)
            finally:
                writer.close()
                read_transport.close()
            await asyncio.sleep(REOPEN_DELAY)

    async def serve_vsock(self, port: int = EXEC_PORT) -> None:
        sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        sock.bind((socket.VMADDR_CID_ANY, port))
        sock.listen(64)

        async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            stream = SocketStream(reader, writer)
            try:
                await serve_exec_stream(stream, self.exec_config)
            except ChannelError:
                pass
            finally:
                await stream.close()

        server = await asyncio.start_server(on_connection, sock=sock)
        log.info("serving exec on vsock port %d", port)
        async with server:
            await server.serve_forever()


async def _pipe_streams(
    fd: int,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, asyncio.BaseTransport]:
    """asyncio streams over a character device opened read-write (one fd per direction,
    because each pipe transport closes its own)."""
    loop = asyncio.get_running_loop()
    write_fd = os.dup(fd)
    reader = asyncio.StreamReader(limit=2**20)
    read_transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
    )
    write_transport, write_protocol = await loop.connect_write_pipe(
        lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()),
        os.fdopen(write_fd, "wb", buffering=0),
    )
    writer = asyncio.StreamWriter(write_transport, write_protocol, None, loop)
    return reader, writer, read_transport


async def splice_streams(
    stream: MuxStream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Copy both ways between a mux stream and a local socket, passing half-closes on."""

    async def to_local() -> None:
        while data := await stream.read(SPLICE_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    async def to_host() -> None:
        while data := await reader.read(SPLICE_CHUNK):
            await stream.write(data)
        await stream.write_eof()

    tasks = [asyncio.create_task(to_local()), asyncio.create_task(to_host())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()
    except (ChannelError, ConnectionError, OSError):
        pass
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        writer.close()
