"""Talking to vmsilod from the command-line tools.

Finds the control socket (``VMSILO_CONTROL_SOCKET``, else the system daemon's, else the
invoking user's own), sends one request and reads its reply. The errors a user meets here —
no daemon, permission denied, a request the daemon refused — become ``UserError`` with what
to do next.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

from vmsilo.errors import UserError
from vmsilo.host.paths import Mode, Paths
from vmsilo.protocol import control
from vmsilo.protocol.errors import ProtocolError

ENV_SOCKET = "VMSILO_CONTROL_SOCKET"


def control_socket_path() -> Path:
    """Root talks to the system daemon; another user to the system daemon when one runs,
    else to their own user-mode daemon."""
    explicit = os.environ.get(ENV_SOCKET)
    if explicit:
        return Path(explicit)
    system = Paths.for_mode(Mode.SYSTEM).control_socket
    if os.geteuid() == 0 or system.exists():
        return system
    return Paths.for_mode(Mode.USER).control_socket


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def request(self, request: control.Request) -> dict[str, Any]:
        try:
            encoded = control.encode_request(request)
        except ProtocolError as exc:  # e.g. a VM name the protocol cannot carry
            raise UserError(f"cannot ask vmsilod that: {exc}") from exc
        self.writer.write(encoded)
        await self.writer.drain()
        try:
            reply = control.decode_reply(await control.read_line(self.reader))
        except EOFError as exc:
            raise UserError("vmsilod closed the connection without answering (it may be "
                            "stopping); see the daemon's log") from exc
        except ProtocolError as exc:
            raise UserError(f"vmsilod sent a malformed answer ({exc}); see the daemon's "
                            "log") from exc
        if not reply["ok"]:
            raise UserError(str(reply.get("error", "vmsilod refused the request")))
        return reply

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


async def connect(path: Path | None = None) -> Connection:
    path = path or control_socket_path()
    try:
        reader, writer = await asyncio.open_unix_connection(str(path),
                                                            limit=control.MAX_LINE + 1)
    except FileNotFoundError:
        raise UserError(f"vmsilod is not running (no control socket at {path}); start it "
                        "with: systemctl start vmsilod, or in the foreground: vmsilo daemon"
                        ) from None
    except ConnectionRefusedError:
        raise UserError(f"vmsilod is not running ({path} refuses connections); start it "
                        "with: systemctl start vmsilod, or: vmsilo daemon") from None
    except PermissionError:
        raise UserError(f"permission denied on {path}: only root and the user named in the "
                        "vmsilo config may control VMs") from None
    return Connection(reader, writer)


async def call(request: control.Request) -> dict[str, Any]:
    """One request, one reply, connection closed."""
    conn = await connect()
    try:
        return await conn.request(request)
    finally:
        await conn.close()
