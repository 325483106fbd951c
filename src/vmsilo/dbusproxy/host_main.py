"""``python -m vmsilo.dbusproxy.host_main``: the host half for one VM, as vmsilod starts it
(as the desktop user, sandboxed, on that user's session bus). Its streams to guest port 5001
come from its stream broker (``--broker-fd``, ``vmsilo.protocol.broker``); while the guest
half is not up yet (the guest is still booting) it asks again. It ends when vmsilod closes
the broker (the VM stops) or sends SIGTERM. A protocol violation ends that connection (the
reason is in the log); it connects again after a pause that doubles with each violation in a
row (RETRY_SECONDS up to VIOLATION_BACKOFF_MAX), so a guest that keeps breaking the protocol
costs little, and one that broke it once (or had a burst shed) gets its proxy back. The guest
half re-announces its tray items to each new connection.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from collections.abc import Sequence

from vmsilo.dbusproxy.host import HostProxy
from vmsilo.protocol.broker import BrokerClient, BrokerClosedError, StreamUnavailableError
from vmsilo.protocol.dbusproxy import PORT
from vmsilo.protocol.errors import ProtocolError

RETRY_SECONDS = 2.0
VIOLATION_BACKOFF_MAX = 300.0

log = logging.getLogger("vmsilo-dbus-proxy")


async def serve(args: argparse.Namespace) -> int:
    colour = tuple(int(part) for part in args.colour.split(","))
    broker = BrokerClient(args.broker_fd)
    this = asyncio.current_task()
    assert this is not None
    # As the sandbox's PID 1 it gets no default action for SIGTERM: it must handle it.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, this.cancel)
    violations = 0
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
            began = time.monotonic()
            await proxy.run()
            if time.monotonic() - began > VIOLATION_BACKOFF_MAX:
                violations = 0  # a long good run in between: not "in a row"
            if proxy.violation is None:
                violations = 0
                await asyncio.sleep(RETRY_SECONDS)  # the guest half restarted, or the VM stops
                continue
            violations += 1
            pause = min(RETRY_SECONDS * 2 ** min(violations, 16), VIOLATION_BACKOFF_MAX)
            log.warning("VM %s: D-Bus proxy: connecting again in %.0f s (violation %d in a "
                        "row)", args.vm, pause, violations)
            await asyncio.sleep(pause)
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
