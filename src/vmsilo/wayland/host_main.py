"""``python -m vmsilo.wayland.host_main``: the host half of one VM's Wayland path, as vmsilod
starts it: as the desktop user, in one sandbox that sees only the compositor's socket and a
private working directory (an empty ``/tmp`` of its own).

    guest program → waypipe server (guest) → port 5003 → [bridge] → waypipe client
        → [filter] → the VM's security-context socket, or the compositor itself

It runs the three parts itself, in a fresh private directory:

1. ``vmsilo-wayland-seccontext`` makes ``seccontext.sock`` with the compositor's
   security-context protocol (skipped, with one log line, when the compositor lacks it);
2. the filter listens on ``filter.sock``; each connection goes on to the security-context
   socket or the compositor;
3. waypipe's client half listens on ``waypipe.sock``; its display is the filter.

The bridge keeps ``PARKED`` streams open to guest port 5003, each asked of the stream broker
(``--broker-fd``, ``vmsilo.protocol.broker``), and joins each claimed one to waypipe's client
half. It ends when vmsilod closes the broker (the VM stops) or sends SIGTERM; as the
sandbox's PID 1, its end ends the other two.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from vmsilo.channel.stream import splice_sockets
from vmsilo.host import proc
from vmsilo.protocol.broker import BrokerClient, BrokerClosedError, StreamUnavailableError
from vmsilo.protocol.errors import ProtocolError
from vmsilo.protocol.wayland import CLAIM, PARKED, PORT
from vmsilo.wayland.filter import Filter
from vmsilo.wayland.protocols import system_tables

RETRY_SECONDS = 1.0
SECCONTEXT_WAIT_SECONDS = 10.0
WAYPIPE_WAIT_SECONDS = 30.0

log = logging.getLogger("vmsilo-wayland")


async def _carry(vm: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 waypipe_socket: Path, parked: Callable[[], None]) -> None:
    """One parked stream: wait for the guest's claim, then carry one program. ``parked`` is
    called once the stream is no longer parked (claimed or ended)."""
    try:
        first = await reader.read(1)
    except (ConnectionError, OSError):
        first = b""
    if first != CLAIM:
        writer.close()
        if first:
            log.warning("VM %s: unexpected byte on a parked Wayland stream; closed", vm)
        # Parked streams end when the guest half does: do not ask again at once.
        await asyncio.sleep(RETRY_SECONDS)
        parked()
        return
    parked()  # the next parked stream can be asked for now
    try:
        waypipe_reader, waypipe_writer = await asyncio.open_unix_connection(str(waypipe_socket))
    except OSError as exc:
        log.warning("VM %s: waypipe's client half is not reachable: %s", vm, exc)
        writer.close()
        return
    await splice_sockets(reader, writer, waypipe_reader, waypipe_writer)
    writer.close()


async def bridge(vm: str, broker: BrokerClient, waypipe_socket: Path) -> None:
    """Keep PARKED streams parked in the guest until vmsilod closes the broker. Only once
    waypipe's client half listens: a guest program claims a stream at once, and its
    connection goes there."""
    for _ in range(int(WAYPIPE_WAIT_SECONDS / 0.05)):
        if waypipe_socket.exists():
            break
        await asyncio.sleep(0.05)
    else:
        log.warning("VM %s: waypipe's client half does not listen on %s", vm, waypipe_socket)
    slots = asyncio.Semaphore(PARKED)
    tasks: set[asyncio.Task[None]] = set()
    while True:
        await slots.acquire()
        try:
            sock = await broker.open(PORT)
        except StreamUnavailableError as exc:
            slots.release()
            log.debug("VM %s: no stream to port %d now (%s); asking again", vm, PORT, exc)
            await asyncio.sleep(RETRY_SECONDS)
            continue
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        task = asyncio.create_task(_carry(vm, reader, writer, waypipe_socket, slots.release))
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


def security_context(vm: str, compositor: Path, socket_path: Path,
                     app_id: str) -> subprocess.Popen[bytes] | None:
    """Run the security-context helper; it if the compositor made the socket, else None
    (the filter then connects to the compositor directly)."""
    helper = proc.spawn(
        [sys.executable, "-m", "vmsilo.wayland.seccontext", "--display", str(compositor),
         "--socket", str(socket_path), "--vm", vm, "--app-id", app_id],
        stdout=subprocess.PIPE, stderr=sys.stderr.fileno(), new_session=False)
    assert helper.stdout is not None
    ready, _, _ = select.select([helper.stdout], [], [], SECCONTEXT_WAIT_SECONDS)
    line = (helper.stdout.readline().decode(errors="replace").strip() if ready
            else "no answer from the compositor")
    if line == "ready":
        log.info("VM %s: connections get the compositor's security context", vm)
        return helper
    proc.stop(helper)
    if line == "unsupported":
        log.info("VM %s: the compositor has no security-context protocol: VM windows connect "
                 "to it directly (still through vmsilo's filter)", vm)
    else:
        log.warning("VM %s: no security context (%s); connecting directly", vm,
                    line or f"exit {helper.returncode}")
    return None


def _terminate(*_: object) -> None:
    # As the sandbox's PID 1 it gets no default action for SIGTERM: it must handle it.
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vmsilo-wayland", description=__doc__)
    parser.add_argument("--vm", required=True)
    parser.add_argument("--broker-fd", type=int, required=True,
                        help="the inherited descriptor of this helper's stream broker")
    parser.add_argument("--compositor", type=Path, required=True,
                        help="the compositor's socket")
    parser.add_argument("--app-id", required=True,
                        help="the security context's app id, e.g. vmsilo:banking:#2ecc71")
    parser.add_argument("--waypipe", default="waypipe", help="waypipe's executable")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, _terminate)
    broker = BrokerClient(args.broker_fd)
    work = Path(tempfile.mkdtemp(prefix="vmsilo-wayland-"))
    children: list[subprocess.Popen[bytes]] = []
    wayland_filter: Filter | None = None
    try:
        upstream = args.compositor
        seccontext = security_context(args.vm, args.compositor, work / "seccontext.sock",
                                      args.app_id)
        if seccontext is not None:
            children.append(seccontext)
            upstream = work / "seccontext.sock"
        wayland_filter = Filter(args.vm, system_tables(), work / "filter.sock",
                                lambda: connector(upstream))
        # waypipe's client half connects to its display as it starts, and gives up if nothing
        # listens there yet: the filter listens first.
        wayland_filter.listen()
        threading.Thread(target=wayland_filter.serve_forever, daemon=True).start()
        log.info("VM %s: Wayland filter → %s", args.vm, upstream)
        children.append(proc.spawn(
            [args.waypipe, "--no-gpu", "--socket", str(work / "waypipe.sock"), "client"],
            stdout=sys.stderr.fileno(), stderr=sys.stderr.fileno(), new_session=False,
            env={"XDG_RUNTIME_DIR": str(work), "WAYLAND_DISPLAY": str(work / "filter.sock")}))
        asyncio.run(bridge(args.vm, broker, work / "waypipe.sock"))
    except BrokerClosedError:
        log.info("VM %s: vmsilod closed the broker; the Wayland half ends", args.vm)
    except ProtocolError as exc:
        log.error("VM %s: bad reply from vmsilod's broker: %s", args.vm, exc)
        return 1
    except (KeyboardInterrupt, SystemExit):
        log.info("VM %s: stopped; the Wayland half ends", args.vm)
    finally:
        for child in reversed(children):
            proc.stop(child)
        if wayland_filter is not None:
            wayland_filter.close()
            stats = wayland_filter.stats
            log.info("VM %s: %d Wayland connections, %d closed for violations; not offered: "
                     "%s", args.vm, stats.connections, stats.violations,
                     ", ".join(sorted(stats.hidden)) or "-")
        broker.close()
        with contextlib.suppress(OSError):
            shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
