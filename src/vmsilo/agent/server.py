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
# How long to wait before reopening the port device after its connection ended (a protocol
# violation or a device error).
REOPEN_DELAY = 0.5
# While no host is connected the device reports end-of-file continuously; look this often.
HOST_ABSENT_POLL = 0.2


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
        """Serve the multiplexer on the virtio-serial port device. The connection (and its
        session) lives across host disconnects; the device is reopened only when it ends."""
        log.info("serving the multiplexer on %s", path)
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as exc:
                log.warning("cannot open %s: %s", path, exc)
                await asyncio.sleep(REOPEN_DELAY)
                continue
            reader, writer, feeder = await _port_streams(fd)
            try:
                await self.run_mux(reader, writer)
            finally:
                feeder.stop()
                writer.close()
                os.close(fd)
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


class _PortFeeder:
    """Feeds a StreamReader from the virtio-serial port device.

    While no host is connected the port reads as end-of-file. That is not the end of the
    connection: the host may be a vmsilod that is restarting, and it reconnects to the same
    guest connection (same mux session), so the agent's streams and session survive. Ending
    the connection on EOF instead would race with the reconnect: the guest's "host connected"
    notice and the host's first bytes travel on different virtio queues, so a fresh host could
    be greeted by one session and then see another. EOF therefore only pauses reading for a
    moment; a real read error ends the connection.
    """

    def __init__(self, fd: int, reader: asyncio.StreamReader) -> None:
        self._fd = fd
        self._reader = reader
        self._loop = asyncio.get_running_loop()
        self._retry: asyncio.TimerHandle | None = None
        os.set_blocking(fd, False)
        self._loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, 256 * 1024)
        except BlockingIOError:
            return
        except OSError as exc:
            log.warning("reading the port device failed: %s", exc)
            self.stop()
            self._reader.feed_eof()
            return
        if data:
            self._reader.feed_data(data)
            return
        # No host connected: the device polls as hung up until one is, so look again later.
        self._loop.remove_reader(self._fd)
        self._retry = self._loop.call_later(HOST_ABSENT_POLL, self._resume)

    def _resume(self) -> None:
        self._retry = None
        self._loop.add_reader(self._fd, self._readable)

    def stop(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self._loop.remove_reader(self._fd)


async def _port_streams(fd: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, _PortFeeder]:
    """asyncio streams over the port device (a dup of the fd for writing, because the write
    pipe transport closes its own)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**20)
    feeder = _PortFeeder(fd, reader)
    write_fd = os.dup(fd)
    write_transport, write_protocol = await loop.connect_write_pipe(
        lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()),
        os.fdopen(write_fd, "wb", buffering=0),
    )
    writer = asyncio.StreamWriter(write_transport, write_protocol, None, loop)
    return reader, writer, feeder


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
