"""vmsilod's side of the D-Bus proxy: when a VM with ``dbus.tray`` or ``dbus.notifications``
is running, one host half (``vmsilo.dbusproxy.host_main``) runs for it as the desktop user,
sandboxed (``vmsilo.daemon.helpers``): it sees the session bus socket, bound at
``/run/desktop/bus``, and its stream broker, which gives it streams to guest port 5001 of its
own VM and nothing else. It is stopped when the VM stops. Without a session bus for the user
(no desktop session, e.g. a server), nothing is forwarded and vmsilod says so once.

``VMSILO_HOST_SESSION_BUS`` names the bus explicitly (tests use a private one); the bus must
be a ``unix:path=`` address (an abstract socket lives in the host's network namespace, which
the sandbox does not share).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from vmsilo.config import ResolvedVm
from vmsilo.daemon.broker import OpenPort
from vmsilo.daemon.helpers import (
    DESKTOP_DIR,
    DesktopSocketError,
    HelperKind,
    HelperLauncher,
    LogOpener,
)
from vmsilo.errors import UserError
from vmsilo.host.interpreter import helper_python
from vmsilo.host.paths import Paths
from vmsilo.host.proc import ProcessError
from vmsilo.protocol.dbusproxy import PORT

log = logging.getLogger(__name__)

MODULE = "vmsilo.dbusproxy.host_main"
LOG_NAME = "dbus-proxy.log"
BUS_INSIDE = DESKTOP_DIR / "bus"
# The proxy uses one stream; a second covers the guest half restarting while the old one ends.
MAX_STREAMS = 4


def bus_socket_path(address: str) -> Path:
    """The socket of the first ``unix:path=`` entry of a D-Bus address (D-Bus specification,
    "Server Addresses": ``transport:key=value,…`` entries separated by ``;``, values
    %-escaped). Raises ``DesktopSocketError`` if there is none."""
    for entry in address.split(";"):
        transport, _, params = entry.partition(":")
        if transport != "unix":
            continue
        for pair in params.split(","):
            key, _, value = pair.partition("=")
            if key == "path" and value:
                return Path(_unescape(value))
    raise DesktopSocketError(
        f"session bus address {address!r} has no unix:path= entry; vmsilo's D-Bus proxy "
        "needs the bus on a socket path (an abstract socket is not reachable from its "
        "sandbox): set VMSILO_HOST_SESSION_BUS=unix:path=<socket>")


def _unescape(value: str) -> str:
    out = bytearray()
    index = 0
    raw = value.encode()
    while index < len(raw):
        if raw[index : index + 1] == b"%" and index + 3 <= len(raw):
            try:
                out.append(int(raw[index + 1 : index + 3], 16))
                index += 3
                continue
            except ValueError:
                pass
        out.append(raw[index])
        index += 1
    return out.decode(errors="surrogateescape")


class ProxyLauncher(HelperLauncher):
    kind = HelperKind("D-Bus proxy", PORT, MAX_STREAMS, LOG_NAME, BUS_INSIDE)

    def __init__(self, paths: Paths, owner: tuple[int, int] | None, open_port: OpenPort,
                 open_log: LogOpener | None = None) -> None:
        super().__init__(paths, owner, open_port, open_log)
        self._warned = False

    def bus_address(self) -> str | None:
        explicit = os.environ.get("VMSILO_HOST_SESSION_BUS")
        if explicit:
            return explicit
        uid = self.owner[0] if self.owner is not None else os.getuid()
        bus = Path(f"/run/user/{uid}/bus")
        return f"unix:path={bus}" if bus.exists() else None

    def start(self, rvm: ResolvedVm) -> None:
        dbus = rvm.vm.dbus
        if not (dbus.tray or dbus.notifications) or self.alive(rvm.name):
            return
        self.stop(rvm.name)
        address = self.bus_address()
        if address is None:
            if not self._warned:
                log.info("no session bus for the desktop user: tray items and notifications "
                         "of VMs are not forwarded")
                self._warned = True
            return
        r, g, b = rvm.vm.colour_rgb

        def command(broker_fd: int) -> list[str]:
            argv = [helper_python(), "-m", MODULE, "--vm", rvm.name, "--colour", f"{r},{g},{b}",
                    "--bus", f"unix:path={BUS_INSIDE}", "--broker-fd", str(broker_fd)]
            argv += [] if dbus.tray else ["--no-tray"]
            return argv + ([] if dbus.notifications else ["--no-notifications"])

        try:
            running = self.launch(rvm.name, bus_socket_path(address), command)
        except (UserError, ProcessError, OSError) as exc:
            log.error("VM %s: the D-Bus proxy cannot start: %s", rvm.name, exc)
            return
        log.info("VM %s: D-Bus proxy started (pid %d)", rvm.name, running.helper.pid)
