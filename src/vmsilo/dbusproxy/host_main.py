"""``python -m vmsilo.dbusproxy.host_main``: the host half for one VM, as vmsilod starts it
(as the desktop user, sandboxed, on that user's session bus). Its streams to guest port 5001
come from its stream broker (``--broker-fd``, ``vmsilo.protocol.broker``); while the guest
half is not up yet (the guest is still booting) it asks again. It ends when vmsilod closes
the broker (the VM stops) or sends SIGTERM. A protocol violation ends it: the VM's proxy stays
down until the VM restarts, and the reason is in the log.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from vmsilo.dbusproxy.host import HostProxy
from vmsilo.protocol.broker import BrokerClient, BrokerClosedError, StreamUnavailableError
from vmsilo.protocol.dbusproxy import PORT
from vmsilo.protocol.errors import ProtocolError

RETRY_SECONDS = 2.0

log = logging.getLogger("vmsilo-dbus-proxy")


async def serve(args: argparse.Namespace) -> int:
    colour = tuple(int(part) for part in args.colour.split(","))
    broker = BrokerClient(args.broker_fd)
    this = asyncio.current_task()
    assert this is not None
    # As the sandbox's PID 1 it gets no default action for SIGTERM: it must handle it.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, this.cancel)
    try:
        while True:
            try:
                sock = await broker.open(PORT)
            except StreamUnavailableError as exc:
                log.debug("VM %s: port %d not ready (%s); asking again", args.vm, PORT, exc)
                await asyncio.sleep(RETRY_SECONDS)
                continue
            reader, writer = await asyncio.open_unix_connection(sock=sock)
            proxy = HostProxy(args.vm, (colour[0], colour[1], colour[2]), args.bus, reader,
                              writer, tray=args.tray, notifications=args.notifications)
            log.info("VM %s: D-Bus proxy connected", args.vm)
            await proxy.run()
            if proxy.violation is not None:
                return 1
            await asyncio.sleep(RETRY_SECONDS)  # the guest half restarted, or the VM stops
    except BrokerClosedError:
        log.info("VM %s: vmsilod closed the broker; the D-Bus proxy ends", args.vm)
        return 0
    except ProtocolError as exc:
        log.error("VM %s: bad reply from vmsilod's broker: %s", args.vm, exc)
        return 1
    except asyncio.CancelledError:
        log.info("VM %s: stopped; the D-Bus proxy ends", args.vm)
        return 0
    finally:
        broker.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vmsilo-dbus-proxy", description=__doc__)
    parser.add_argument("--vm", required=True)
    parser.add_argument("--colour", required=True, help="r,g,b of the VM's colour")
    parser.add_argument("--bus", required=True, help="the host session bus address")
    parser.add_argument("--broker-fd", type=int, required=True,
                        help="the inherited descriptor of this helper's stream broker")
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
