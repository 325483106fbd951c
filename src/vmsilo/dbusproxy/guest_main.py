"""``python3 -m vmsilo.dbusproxy.guest_main``: the guest half, run by
``vmsilo-dbus-proxy.service`` as the guest user on that user's session bus. systemd listens on
guest port 5001 for it (``vmsilo-dbus-proxy.socket``, fd 3); each connection from the host
half is served until it closes. It waits for the session bus (the user's systemd starts it at
boot) before serving.
"""

import asyncio
import logging
import os
import socket
import sys
import time
from pathlib import Path

from vmsilo.dbusproxy.guest import GuestProxy

LISTEN_FD = 3
BUS_WAIT_SECONDS = 60.0

log = logging.getLogger("vmsilo-dbus-proxy-guest")


def notify_ready() -> None:
    """Tell systemd (Type=notify) that the names are owned: the agent, ordered after this
    service, then runs programs that find the notification server and the tray watcher."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"READY=1", address)


async def serve(listener: socket.socket, bus_address: str) -> None:
    proxy = GuestProxy(bus_address)
    await proxy.start()
    notify_ready()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await proxy.serve(reader, writer)
        except Exception:  # one broken session must not end the service
            log.exception("D-Bus proxy session failed")

    server = await asyncio.start_unix_server(handle, sock=listener)
    async with server:
        await server.serve_forever()


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    if os.environ.get("LISTEN_FDS") != "1":
        print("vmsilo-dbus-proxy-guest: expects one socket from systemd", file=sys.stderr)
        return 1
    listener = socket.socket(fileno=LISTEN_FD)
    bus = Path(f"/run/user/{os.getuid()}/bus")
    for _ in range(int(BUS_WAIT_SECONDS * 10)):
        if bus.exists():
            break
        time.sleep(0.1)
    asyncio.run(serve(listener, f"unix:path={bus}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
