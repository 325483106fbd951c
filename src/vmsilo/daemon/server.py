"""The control socket: who may talk to vmsilod, and what each request does.

Every connection is checked against the peer's credentials (``SO_PEERCRED``) before a byte of
it is read: root and the configured user are served, anyone else gets one refusal line and
is disconnected. Requests are validated (``protocol.control``) and dispatched to the
``Supervisor``; only user errors travel back as text — a bug is logged here with its traceback
and the client is told to read the daemon's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from vmsilo.channel.stream import splice_sockets
from vmsilo.errors import UserError
from vmsilo.protocol import control
from vmsilo.protocol.errors import ProtocolError

log = logging.getLogger(__name__)

_UCRED = struct.Struct("3i")


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> Peer:
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                  _UCRED.size))
    return Peer(pid, uid, gid)


class Supervisor(Protocol):
    """What the server needs from the daemon proper."""

    def status(self) -> list[dict[str, Any]]: ...

    async def start(self, vm: str) -> None: ...

    async def stop(self, vm: str) -> str: ...

    async def stop_all(self) -> list[str]: ...

    async def reload(self) -> list[str]: ...

    async def open_port(self, vm: str, port: int, start: bool, timeout: float | None) -> Any: ...

    async def open_console(self, vm: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        ...


Splice = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class ControlServer:
    def __init__(self, supervisor: Supervisor, path: Path, allowed_uids: Iterable[int],
                 group: int | None = None) -> None:
        self.supervisor = supervisor
        self.path = path
        self.allowed_uids = frozenset(allowed_uids)
        self.group = group
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(
            self._serve, path=str(self.path), limit=control.MAX_LINE + 1
        )
        # root:<user's group> 0660 — the socket file is the first gate, SO_PEERCRED the second.
        if self.group is not None:
            os.chown(self.path, 0, self.group)
        os.chmod(self.path, 0o660)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        peer = peer_credentials(sock)
        try:
            if peer.uid not in self.allowed_uids:
                log.warning("refused control connection from uid %d (pid %d)", peer.uid, peer.pid)
                writer.write(control.encode_reply(
                    False, error=f"permission denied: uid {peer.uid} may not control vmsilo "
                    "VMs; run as root or as the user named in the config"))
                await writer.drain()
                # Closing with the peer's request still unread would reset the connection and
                # could lose the refusal: half-close, then drain a little (bounded) first.
                writer.write_eof()
                with contextlib.suppress(TimeoutError, ConnectionError):
                    await asyncio.wait_for(reader.read(control.MAX_LINE), 2.0)
                return
            await self._handle(reader, writer, peer)
        except (ConnectionError, EOFError):
            pass
        except Exception:
            log.exception("control connection from uid %d failed", peer.uid)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      peer: Peer) -> None:
        try:
            request = control.decode_request(await control.read_line(reader))
        except ProtocolError as exc:
            writer.write(control.encode_reply(False, error=f"bad request: {exc}"))
            await writer.drain()
            return
        try:
            await self._dispatch(request, reader, writer)
        except UserError as exc:
            writer.write(control.encode_reply(False, error=str(exc)))
            await writer.drain()
        except Exception:
            log.exception("request %s from uid %d failed", request.op, peer.uid)
            writer.write(control.encode_reply(
                False, error=f"vmsilod failed to {request.op}; see the daemon's log"))
            await writer.drain()

    async def _dispatch(self, request: control.Request, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        sup = self.supervisor
        reply: bytes
        if request.op == "ping":
            reply = control.encode_reply(True)
        elif request.op == "status":
            reply = control.encode_reply(True, vms=sup.status())
        elif request.op == "start":
            assert request.vm is not None
            await sup.start(request.vm)
            reply = control.encode_reply(True)
        elif request.op == "stop":
            if request.all:
                reply = control.encode_reply(True, stopped=await sup.stop_all())
            else:
                assert request.vm is not None
                reply = control.encode_reply(True, how=await sup.stop(request.vm))
        elif request.op == "reload":
            reply = control.encode_reply(True, pending=await sup.reload())
        elif request.op == "open":
            assert request.vm is not None and request.port is not None
            stream = await sup.open_port(request.vm, request.port, request.start,
                                         request.timeout)
            writer.write(control.encode_reply(True))
            await writer.drain()
            await splice_stream(reader, writer, stream)
            return
        elif request.op == "console":
            assert request.vm is not None
            console_reader, console_writer = await sup.open_console(request.vm)
            writer.write(control.encode_reply(True))
            await writer.drain()
            await splice_sockets(reader, writer, console_reader, console_writer)
            return
        else:  # pragma: no cover - the schema only admits the ops above
            raise AssertionError(request.op)
        writer.write(reply)
        await writer.drain()


CHUNK = 256 * 1024


async def splice_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        stream: Any) -> None:
    """Copy bytes both ways between a client socket and a guest stream, with backpressure
    (each side waits for the other to take data), and pass half-closes along."""

    async def client_to_guest() -> None:
        try:
            while data := await reader.read(CHUNK):
                await stream.write(data)
            await stream.write_eof()
        except Exception as exc:
            log.debug("client->guest ended: %s", exc)

    async def guest_to_client() -> None:
        try:
            while data := await stream.read(CHUNK):
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except Exception as exc:
            log.debug("guest->client ended: %s", exc)

    to_guest = asyncio.create_task(client_to_guest())
    try:
        await guest_to_client()
        # The guest side finished; give the client a moment to finish sending, then stop.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(to_guest), 1.0)
    finally:
        to_guest.cancel()
        with contextlib.suppress(BaseException):
            await to_guest
        await stream.close()
