"""A request the control protocol cannot carry (e.g. a VM name it refuses) is one clear
error for every command, before anything is sent — never a traceback."""

from __future__ import annotations

import asyncio
import socket

import pytest

from vmsilo.cli.client import Connection
from vmsilo.errors import UserError
from vmsilo.protocol import control


@pytest.mark.parametrize("op", ["start", "stop", "console", "open"])
def test_an_unencodable_request_is_a_user_error_and_sends_nothing(op: str) -> None:
    async def attempt() -> bytes:
        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=ours)
        theirs.setblocking(False)
        try:
            with pytest.raises(UserError, match="cannot ask vmsilod that"):
                await Connection(reader, writer).request(control.Request(
                    op=op, vm="bad name!\n", port=5000 if op == "open" else None))
            try:
                return theirs.recv(100)
            except BlockingIOError:
                return b""
        finally:
            writer.close()
            theirs.close()

    assert asyncio.run(attempt()) == b""
