"""Host-side transports: how the host opens a stream to a guest port.

``SerialMuxTransport`` keeps one connection to QEMU's chardev socket of the ``vmsilo.mux``
virtio-serial port and multiplexes streams over it, reconnecting (with a fresh handshake)
after the connection is lost. ``VsockTransport`` uses kernel vsock to a CID.
``HybridVsockTransport`` speaks cloud-hypervisor's hybrid vsock: connect to the VM's unix
socket, send ``CONNECT <port>\\n``, expect ``OK <n>\\n``. Every failure is a
``ChannelError`` naming the VM or socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from pathlib import Path
from typing import Protocol

from vmsilo.channel.mux import MuxConnection
from vmsilo.channel.stream import ChannelError, SocketStream, Stream, StreamRefusedError
from vmsilo.protocol.mux import Role

STREAM_LIMIT = 1024 * 1024


class Transport(Protocol):
    async def open_stream(self, port: int, timeout: float | None = None) -> Stream: ...

    async def close(self) -> None: ...


class SerialMuxTransport:
    def __init__(self, socket_path: Path | str, vm_name: str) -> None:
        self.socket_path = Path(socket_path)
        self.vm_name = vm_name
        self._conn: MuxConnection | None = None
        self._runner: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def _connection(self, timeout: float | None) -> MuxConnection:
        async with self._lock:
            if self._conn is None or self._conn.closed.is_set():
                await self._drop()
                try:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_unix_connection(self.socket_path, limit=STREAM_LIMIT),
                        timeout,
                    )
                except (OSError, TimeoutError) as exc:
                    raise ChannelError(
                        f"vm {self.vm_name}: cannot connect to {self.socket_path}: {exc}"
                    ) from exc
                self._conn = MuxConnection(
                    reader, writer, role=Role.HOST, peer_name=f"vm {self.vm_name}"
                )
                self._runner = asyncio.create_task(self._conn.run())
            conn = self._conn
        # A connection without handshake is kept: the agent may still be booting, and its
        # HELLO will arrive on this connection.
        try:
            await asyncio.wait_for(conn.established.wait(), timeout)
        except TimeoutError:
            raise ChannelError(
                f"vm {self.vm_name}: no answer from the guest agent on {self.socket_path} "
                f"within {timeout} s"
            ) from None
        return conn

    async def open_stream(self, port: int, timeout: float | None = None) -> Stream:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        conn = await self._connection(timeout)
        remaining = None if deadline is None else max(0.0, deadline - loop.time())
        return await conn.open_stream(port, remaining)

    @property
    def connected(self) -> bool:
        return (
            self._conn is not None
            and self._conn.established.is_set()
            and not (self._conn.closed.is_set())
        )

    async def _drop(self) -> None:
        if self._conn is not None:
            await self._conn.close()
        if self._runner is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        self._conn = None
        self._runner = None

    async def close(self) -> None:
        async with self._lock:
            await self._drop()


def _refused_or_failed(port: int, where: str, exc: OSError) -> ChannelError:
    if isinstance(exc, ConnectionRefusedError | ConnectionResetError):
        return StreamRefusedError(port, f"nothing listens on {where}")
    return ChannelError(f"cannot connect to {where}: {exc}")


class VsockTransport:
    def __init__(self, cid: int) -> None:
        self.cid = cid

    async def open_stream(self, port: int, timeout: float | None = None) -> Stream:
        where = f"vsock {self.cid}:{port}"
        try:
            sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        except OSError as exc:
            raise ChannelError(f"cannot create a vsock socket: {exc}") from exc
        try:
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(loop.sock_connect(sock, (self.cid, port)), timeout)
            reader, writer = await asyncio.open_connection(sock=sock, limit=STREAM_LIMIT)
        except TimeoutError:
            sock.close()
            raise ChannelError(f"{where}: no connection within {timeout} s") from None
        except OSError as exc:
            sock.close()
            raise _refused_or_failed(port, where, exc) from exc
        except BaseException:
            sock.close()
            raise
        return SocketStream(reader, writer)

    async def close(self) -> None:
        pass


_OK_LINE = re.compile(rb"OK [0-9]{1,10}\n")
MAX_REPLY_LINE = 64


class HybridVsockTransport:
    def __init__(self, uds_path: Path | str) -> None:
        self.uds_path = Path(uds_path)

    async def open_stream(self, port: int, timeout: float | None = None) -> Stream:
        where = f"hybrid vsock {self.uds_path} port {port}"
        try:
            return await asyncio.wait_for(self._connect(port, where), timeout)
        except TimeoutError:
            raise ChannelError(f"{where}: no connection within {timeout} s") from None

    async def _connect(self, port: int, where: str) -> Stream:
        try:
            reader, writer = await asyncio.open_unix_connection(self.uds_path, limit=STREAM_LIMIT)
        except OSError as exc:
            raise ChannelError(f"cannot connect to {self.uds_path}: {exc}") from exc
        stream = SocketStream(reader, writer)
        try:
            writer.write(f"CONNECT {port}\n".encode())
            await writer.drain()
            untrusted_line = await _read_line(reader, MAX_REPLY_LINE)
        except (OSError, asyncio.IncompleteReadError) as exc:
            await stream.close()
            raise StreamRefusedError(port, "the VMM closed the connection") from exc
        except BaseException:
            await stream.close()
            raise
        if not _OK_LINE.fullmatch(untrusted_line):
            await stream.close()
            raise ChannelError(f"{where}: unexpected handshake reply {untrusted_line[:32]!r}")
        return stream


async def _read_line(reader: asyncio.StreamReader, cap: int) -> bytes:
    """Read one ``\\n``-terminated line of at most ``cap`` bytes, byte by byte so that nothing
    after the line is consumed from the reader."""
    line = bytearray()
    while len(line) < cap:
        byte = await reader.readexactly(1)
        line += byte
        if byte == b"\n":
            return bytes(line)
    return bytes(line)
