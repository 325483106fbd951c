"""``python -m vmsilo.dbusproxy.host_main``: the host half for one VM, as vmsilod starts it
(as the desktop user, on that user's session bus). It opens guest port 5001 through vmsilod's
control socket and serves until the VM stops; while the guest half is not up yet (the guest
is still booting) it retries. A protocol violation ends it: the VM's proxy stays down until
the VM restarts, and the reason is in the log.
"""

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from vmsilo.cli import client
from vmsilo.dbusproxy.host import HostProxy
from vmsilo.errors import UserError
from vmsilo.protocol import control
from vmsilo.protocol.dbusproxy import PORT

RETRY_SECONDS = 2.0
OPEN_TIMEOUT = 5.0

log = logging.getLogger("vmsilo-dbus-proxy")


async def serve(args: argparse.Namespace) -> int:
    colour = tuple(int(part) for part in args.colour.split(","))
    while True:
        try:
            conn = await client.connect()
            await conn.request(control.Request(op="open", vm=args.vm, port=PORT, start=False,
                                               timeout=OPEN_TIMEOUT))
        except UserError as exc:
            if "is not running" in str(exc) or "is stopped" in str(exc) or "is failed" in str(exc):
                log.info("VM %s: not running; the D-Bus proxy ends", args.vm)
                return 0
            log.debug("VM %s: port %d not ready (%s); retrying", args.vm, PORT, exc)
            await asyncio.sleep(RETRY_SECONDS)
            continue
        proxy = HostProxy(args.vm, (colour[0], colour[1], colour[2]), args.bus, conn.reader,
                          conn.writer, tray=args.tray, notifications=args.notifications)
        log.info("VM %s: D-Bus proxy connected", args.vm)
        await proxy.run()
        if proxy.violation is not None:
            return 1
        await asyncio.sleep(RETRY_SECONDS)  # the guest half restarted, or the VM is stopping


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vmsilo-dbus-proxy", description=__doc__)
    parser.add_argument("--vm", required=True)
    parser.add_argument("--colour", required=True, help="r,g,b of the VM's colour")
    parser.add_argument("--bus", required=True, help="the host session bus address")
    parser.add_argument("--no-tray", dest="tray", action="store_false")
    parser.add_argument("--no-notifications", dest="notifications", action="store_false")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return asyncio.run(serve(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
