"""``python3 -m vmsilo.agent.wayland``: the guest's Wayland display, run by
``vmsilo-wayland.service`` as the guest user.

waypipe's server half owns the display socket (``$XDG_RUNTIME_DIR/wayland-0``) and, for each
program that connects to it, opens a connection to ``waypipe.sock``, which this service
listens on; each such connection is joined to a stream the host parked on guest port 5003
(fd 3, from ``vmsilo-wayland.socket``). See ``vmsilo.protocol.wayland``. Standard library only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

from vmsilo import systemd
from vmsilo.channel.stream import splice_sockets
from vmsilo.protocol.wayland import CLAIM, CLAIM_WAIT_SECONDS

DISPLAY = "wayland-0"
RUNTIME_WAIT_SECONDS = 60.0

log = logging.getLogger("vmsilo-wayland-guest")

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Parking:
    """Streams from the host, waiting for a guest program."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Stream] = asyncio.Queue()

    async def park(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.queue.put((reader, writer))

    async def claim(self) -> Stream | None:
        deadline = asyncio.get_running_loop().time() + CLAIM_WAIT_SECONDS
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return None
            try:
                reader, writer = await asyncio.wait_for(self.queue.get(), remaining)
            except TimeoutError:
                return None
            if reader.at_eof() or writer.is_closing():
                writer.close()
                continue  # the host gave this one up
            return reader, writer


async def serve(listener: socket.socket, runtime: Path) -> None:
    parking = Parking()
    host_server = await asyncio.start_unix_server(parking.park, sock=listener)
    own_dir = runtime / "vmsilo"
    own_dir.mkdir(mode=0o700, exist_ok=True)
    waypipe_socket = own_dir / "waypipe.sock"
    with contextlib.suppress(FileNotFoundError):
        waypipe_socket.unlink()

    async def program(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream = await parking.claim()
        if stream is None:
            log.warning("no stream from the host: is the host's Wayland half running?")
            writer.close()
            return
        stream[1].write(CLAIM)
        await splice_sockets(reader, writer, *stream)
        writer.close()

    program_server = await asyncio.start_unix_server(program, path=str(waypipe_socket))
    os.chmod(waypipe_socket, 0o600)
    # waypipe's server half makes the display socket and serves programs until it ends;
    # `sleep infinity` is only what keeps it running.
    waypipe = subprocess.Popen(
        ["waypipe", "--no-gpu", "--socket", str(waypipe_socket), "--display", DISPLAY,
         "server", "--", "sleep", "infinity"],
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)})
    try:
        for _ in range(600):
            if (runtime / DISPLAY).exists() or waypipe.poll() is not None:
                break
            await asyncio.sleep(0.05)
        if waypipe.poll() is not None:
            raise RuntimeError(f"waypipe exited with {waypipe.returncode}")
        systemd.notify("READY=1")
        log.info("Wayland display %s ready", runtime / DISPLAY)
        async with host_server, program_server:
            while waypipe.poll() is None:
                await asyncio.sleep(1)
        raise RuntimeError(f"waypipe exited with {waypipe.returncode}")
    finally:
        if waypipe.poll() is None:
            waypipe.terminate()
            waypipe.wait()


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    listener = systemd.inherited_listener()
    if listener is None:
        print("vmsilo-wayland-guest: expects one socket from systemd", file=sys.stderr)
        return 1
    runtime = Path(f"/run/user/{os.getuid()}")
    systemd.wait_for_path(runtime, RUNTIME_WAIT_SECONDS)
    try:
        asyncio.run(serve(listener, runtime))
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
