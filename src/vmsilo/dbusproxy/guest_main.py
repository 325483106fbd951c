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
from pathlib import Path

from vmsilo import systemd
from vmsilo.dbusproxy.guest import GuestProxy

BUS_WAIT_SECONDS = 60.0

log = logging.getLogger("vmsilo-dbus-proxy-guest")


async def serve(listener: socket.socket, bus_address: str) -> None:
    proxy = GuestProxy(bus_address)
    await proxy.start()
    systemd.notify("READY=1")

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
    listener = systemd.inherited_listener()
    if listener is None:
        print("vmsilo-dbus-proxy-guest: expects one socket from systemd", file=sys.stderr)
        return 1
    bus = Path(f"/run/user/{os.getuid()}/bus")
    systemd.wait_for_path(bus, BUS_WAIT_SECONDS)
    asyncio.run(serve(listener, f"unix:path={bus}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
