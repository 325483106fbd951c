"""``vsock-connect [--timeout S] [--probe] <vm> <port>``: connect stdin/stdout to a guest port,
whatever the VM's transport (vsock, hybrid vsock or the virtio-serial multiplexer).

With ``--probe`` it only checks that something listens on the port (exit 0) or not (exit 1).
The VM is not started by this command: start it with ``vm-start`` first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Sequence

from vmsilo.cli import client, terminal
from vmsilo.errors import UserError
from vmsilo.protocol import control


async def connect(vm: str, port: int, timeout: float, probe: bool) -> int:
    conn = await client.connect()
    try:
        await conn.request(control.Request(op="open", vm=vm, port=port, start=False,
                                           timeout=timeout))
    except BaseException:
        await conn.close()
        raise
    if probe:
        await conn.close()
        return 0
    out = terminal.fd_sink(1)

    async def upstream() -> None:
        async for data in terminal.read_fd(0):
            conn.writer.write(data)
            await conn.writer.drain()
        if conn.writer.can_write_eof():
            conn.writer.write_eof()

    sender = asyncio.create_task(upstream())
    try:
        while data := await conn.reader.read(65536):
            await out(data)
    finally:
        sender.cancel()
        with contextlib.suppress(BaseException):
            await sender
        await conn.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vsock-connect",
                                     description="Connect stdin/stdout to a guest port.")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="S",
                        help="seconds to wait for the port (default 10)")
    parser.add_argument("--probe", action="store_true",
                        help="only check that the port accepts a connection")
    parser.add_argument("vm")
    parser.add_argument("port", type=int)
    args = parser.parse_args(argv)
    if not 1 <= args.port <= 2**32 - 1:
        print(f"vsock-connect: port {args.port} is out of range 1..4294967295", file=sys.stderr)
        return 1
    try:
        return asyncio.run(connect(args.vm, args.port, args.timeout, args.probe))
    except UserError as exc:
        print(f"vsock-connect: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
