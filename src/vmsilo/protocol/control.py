"""The control socket's messages: CLI tools ↔ vmsilod.

One JSON object per line in each direction, at most ``MAX_LINE`` bytes. A request names an
operation; the reply says ``ok`` and carries the result, or ``error`` with a message meant for
the user. ``open`` and ``console`` turn the connection, after an ok reply, into a raw byte
stream to a guest port or to the VM's serial console.

Requests come from local users (checked by peer credentials before anything else) and are
validated against the table below like any untrusted input. Replies come from the daemon.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from vmsilo.protocol.errors import ProtocolError
from vmsilo.protocol.schema import Bool, Float, Int, Schema, Str, decode, encode

MAX_LINE = 64 * 1024
VM_NAME = r"[a-z0-9][a-z0-9-]{0,62}"

OPS = frozenset({"ping", "status", "start", "stop", "open", "console", "reload"})


@dataclass(frozen=True)
class Request:
    op: str
    vm: str | None = None
    all: bool = False
    port: int | None = None
    start: bool = True  # for "open": start the VM when it is stopped
    timeout: float | None = None  # for "open": how long to wait for the guest port


def _check_request(request: Request) -> None:
    if request.op in ("start", "open", "console") and request.vm is None:
        raise ProtocolError(f"{request.op} needs a vm")
    if request.op == "stop" and (request.vm is None) == (not request.all):
        raise ProtocolError("stop needs a vm or all, not both")
    if request.op == "open" and request.port is None:
        raise ProtocolError("open needs a port")


REQUEST = Schema(
    Request,
    {
        "op": Str(max_len=16, allowed=OPS),
        "vm": Str(max_len=63, pattern=VM_NAME, nullable=True),
        "all": Bool(),
        "port": Int(min=1, max=2**32 - 1, nullable=True),
        "start": Bool(),
        "timeout": Float(min=0, max=3600, nullable=True),
    },
    optional=frozenset({"vm", "all", "port", "start", "timeout"}),
    invariant=_check_request,
)


def encode_request(request: Request) -> bytes:
    return encode(REQUEST, request) + b"\n"


def decode_request(untrusted_line: bytes) -> Request:
    return decode(REQUEST, untrusted_line)


def encode_reply(ok: bool, error: str | None = None, **result: Any) -> bytes:
    body: dict[str, Any] = {"ok": ok, **result}
    if error is not None:
        body["error"] = error
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def decode_reply(line: bytes) -> dict[str, Any]:
    try:
        reply = json.loads(line)
    except ValueError as exc:
        raise ProtocolError(f"malformed reply from vmsilod: {exc}") from None
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise ProtocolError("malformed reply from vmsilod: no ok field")
    return reply


async def read_line(reader: asyncio.StreamReader) -> bytes:
    """One message line; a line longer than MAX_LINE or a connection closed mid-line is a
    protocol error."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise ProtocolError(f"message longer than {MAX_LINE} bytes") from None
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ProtocolError("connection closed in the middle of a message") from None
        raise EOFError from None
    return line[:-1]
