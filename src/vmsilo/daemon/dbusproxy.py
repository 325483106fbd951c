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
from dataclasses import dataclass
from pathlib import Path

from vmsilo.config import ResolvedVm
from vmsilo.daemon.broker import OpenPort, StreamBroker
from vmsilo.daemon.helpers import (
    DESKTOP_DIR,
    DesktopSocketError,
    Helper,
    LogOpener,
    bind_fd_args,
    log_opener,
    open_desktop_socket,
    sandbox_for,
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


@dataclass
class Running:
    helper: Helper
    broker: StreamBroker


class ProxyLauncher:
    def __init__(self, paths: Paths, owner: tuple[int, int] | None, open_port: OpenPort,
                 open_log: LogOpener | None = None) -> None:
        self.paths = paths
        self.owner = owner  # the desktop user's uid, gid (system mode)
        self.open_port = open_port  # Supervisor.open_port
        self.open_log = open_log or log_opener(paths)
        self.running: dict[str, Running] = {}
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
        if not (dbus.tray or dbus.notifications):
            return
        current = self.running.get(rvm.name)
        if current is not None and current.helper.running():
            return
        self.stop(rvm.name)
        address = self.bus_address()
        if address is None:
            if not self._warned:
                log.info("no session bus for the desktop user: tray items and notifications "
                         "of VMs are not forwarded")
                self._warned = True
            return
        try:
            self.running[rvm.name] = self._spawn(rvm, address)
        except (UserError, ProcessError, OSError) as exc:
            log.error("VM %s: the D-Bus proxy cannot start: %s", rvm.name, exc)
            return
        log.info("VM %s: D-Bus proxy started (pid %d)", rvm.name,
                 self.running[rvm.name].helper.pid)

    def _spawn(self, rvm: ResolvedVm, address: str) -> Running:
        bus_fd = open_desktop_socket(bus_socket_path(address), self.owner)
        broker = StreamBroker(rvm.name, "D-Bus proxy", PORT, self.open_port, MAX_STREAMS)
        dbus = rvm.vm.dbus
        r, g, b = rvm.vm.colour_rgb
        argv = [helper_python(), "-m", MODULE, "--vm", rvm.name, "--colour", f"{r},{g},{b}",
                "--bus", f"unix:path={BUS_INSIDE}", "--broker-fd", str(broker.helper_fd)]
        argv += [] if dbus.tray else ["--no-tray"]
        argv += [] if dbus.notifications else ["--no-notifications"]
        try:
            log_fd = self.open_log(rvm.name, LOG_NAME)
            try:
                helper = Helper.spawn(f"VM {rvm.name}: D-Bus proxy", sandbox_for(self.owner),
                                      argv, log_fd=log_fd,
                                      pass_fds=(broker.helper_fd, bus_fd),
                                      extra_bwrap=bind_fd_args(bus_fd, BUS_INSIDE))
            finally:
                os.close(log_fd)
        except BaseException:
            broker.close()
            raise
        finally:
            os.close(bus_fd)
        broker.release()
        broker.start()
        return Running(helper, broker)

    def stop(self, name: str) -> None:
        running = self.running.pop(name, None)
        if running is not None:
            running.broker.close()  # the helper sees its broker end and ends
            running.helper.stop()

    def stop_all(self) -> None:
        for name in list(self.running):
            self.stop(name)
