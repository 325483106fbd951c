"""``python -m vmsilo.wayland.host_main``: the host half of one VM's Wayland path, as vmsilod
starts it (as the desktop user).

    guest program → waypipe server (guest) → port 5003 → [bridge] → waypipe client
        → [filter] → the VM's security-context socket, or the compositor itself

The bridge keeps ``PARKED`` streams open to guest port 5003 (through vmsilod's control socket)
and joins each claimed one to waypipe's client half, which listens on ``waypipe.sock`` in the
VM's Wayland directory; waypipe then connects, per program, to the filter's ``filter.sock``.
It ends when the VM stops.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from vmsilo.channel.stream import splice_sockets
from vmsilo.cli import client
from vmsilo.errors import UserError
from vmsilo.protocol import control
from vmsilo.protocol.wayland import CLAIM, PARKED, PORT
from vmsilo.wayland.filter import Filter
from vmsilo.wayland.protocols import system_tables

RETRY_SECONDS = 1.0
OPEN_TIMEOUT = 5.0
WAYPIPE_WAIT_SECONDS = 30.0

log = logging.getLogger("vmsilo-wayland")


class VmGone(Exception):  # noqa: N818 - not an error: the normal end
    pass


async def _open_parked(vm: str) -> client.Connection:
    while True:
        try:
            conn = await client.connect()
            await conn.request(control.Request(op="open", vm=vm, port=PORT, start=False,
                                               timeout=OPEN_TIMEOUT))
            return conn
        except UserError as exc:
            text = str(exc)
            if "is not running" in text or "is stopped" in text or "is failed" in text:
                raise VmGone from None
            log.debug("VM %s: port %d not ready (%s); retrying", vm, PORT, exc)
            await asyncio.sleep(RETRY_SECONDS)


async def _park(vm: str, waypipe_socket: Path, slots: asyncio.Semaphore) -> None:
    """One parked stream: wait for the guest's claim, then carry one program."""
    conn = await _open_parked(vm)
    try:
        first = await conn.reader.read(1)
    except (ConnectionError, OSError):
        first = b""
    if first != CLAIM:
        conn.writer.close()
        if first:
            log.warning("VM %s: unexpected byte on a parked Wayland stream; closed", vm)
        slots.release()
        return
    slots.release()  # the next parked stream can be opened now
    try:
        reader, writer = await asyncio.open_unix_connection(str(waypipe_socket))
    except OSError as exc:
        log.warning("VM %s: waypipe's client half is not reachable: %s", vm, exc)
        conn.writer.close()
        return
    await splice_sockets(conn.reader, conn.writer, reader, writer)
    conn.writer.close()


async def bridge(vm: str, waypipe_socket: Path) -> None:
    """Keep PARKED streams parked in the guest until the VM stops. Only once waypipe's client
    half listens: a guest program claims a stream at once, and its connection goes there."""
    for _ in range(int(WAYPIPE_WAIT_SECONDS / 0.05)):
        if waypipe_socket.exists():
            break
        await asyncio.sleep(0.05)
    else:
        log.warning("VM %s: waypipe's client half does not listen on %s", vm, waypipe_socket)
    slots = asyncio.Semaphore(PARKED)
    gone = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()

    async def one() -> None:
        try:
            await _park(vm, waypipe_socket, slots)
        except VmGone:
            gone.set()
            slots.release()

    while True:
        await slots.acquire()
        if gone.is_set():
            return
        task = asyncio.create_task(one())
        tasks.add(task)
        task.add_done_callback(tasks.discard)


def connector(upstream: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(str(upstream))
    except OSError:
        sock.close()
        raise
    return sock


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vmsilo-wayland", description=__doc__)
    parser.add_argument("--vm", required=True)
    parser.add_argument("--dir", type=Path, required=True,
                        help="the VM's Wayland directory (filter.sock, waypipe.sock)")
    parser.add_argument("--upstream", type=Path, required=True,
                        help="the compositor's socket, or the VM's security-context socket")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    wayland_filter = Filter(args.vm, system_tables(), args.dir / "filter.sock",
                            lambda: connector(args.upstream))
    wayland_filter.listen()
    threading.Thread(target=wayland_filter.serve_forever, daemon=True).start()
    log.info("VM %s: Wayland filter on %s → %s", args.vm, args.dir / "filter.sock",
             args.upstream)
    try:
        asyncio.run(bridge(args.vm, args.dir / "waypipe.sock"))
    except KeyboardInterrupt:
        return 130
    finally:
        wayland_filter.close()
        stats = wayland_filter.stats
        log.info("VM %s: %d Wayland connections, %d closed for violations; not offered: %s",
                 args.vm, stats.connections, stats.violations,
                 ", ".join(sorted(stats.hidden)) or "-")
    log.info("VM %s: not running; the Wayland half ends", args.vm)
    return 0


if __name__ == "__main__":
    sys.exit(main())
