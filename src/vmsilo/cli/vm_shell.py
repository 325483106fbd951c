"""``vm-shell <vm>``: attach to a running VM's serial console; Ctrl-] detaches.

The console keeps running after you detach, and everything it printed is kept in the VM's
console log; the last part of it is shown when you attach.
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

DETACH = b"\x1d"  # Ctrl-]


async def attach(vm: str) -> None:
    conn = await client.connect()
    await conn.request(control.Request(op="console", vm=vm))
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"Attached to the console of {vm}; Ctrl-] detaches.\r", file=sys.stderr)
    out = terminal.fd_sink(1)

    async def to_console() -> None:
        async for data in terminal.read_fd(0):
            if interactive and DETACH in data:
                data = data.split(DETACH, 1)[0]
                if data:
                    conn.writer.write(data)
                return
            conn.writer.write(data)
            await conn.writer.drain()
        if not interactive:  # piped input: give the console a moment to answer
            await asyncio.sleep(1.0)

    async def from_console() -> None:
        while data := await conn.reader.read(65536):
            await out(data)

    tasks = [asyncio.create_task(to_console()), asyncio.create_task(from_console())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*tasks)
        await conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vm-shell", description="Attach to a VM's serial console (Ctrl-] detaches).")
    parser.add_argument("vm", help="the VM's name")
    args = parser.parse_args(argv)
    try:
        if sys.stdin.isatty():
            with terminal.raw_mode(0):
                asyncio.run(attach(args.vm))
            print(f"\nDetached from {args.vm}; its console keeps running.", file=sys.stderr)
        else:
            asyncio.run(attach(args.vm))
    except UserError as exc:
        print(f"vm-shell: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
