"""vmsilod's side of the D-Bus proxy: when a VM with ``dbus.tray`` or ``dbus.notifications``
is running, one host half (``vmsilo.dbusproxy.host_main``) runs for it as the desktop user on
that user's session bus; it is stopped when the VM stops. Without a session bus for the user
(no desktop session, e.g. a server), nothing is forwarded and vmsilod says so once.

``VMSILO_HOST_SESSION_BUS`` names the bus explicitly (tests use a private one), and
``VMSILO_HELPER_PYTHON`` the interpreter the host half runs with (default: vmsilod's own; the
tests' lives where the desktop user cannot reach it).
"""

import logging
import os
import subprocess
import sys
from pathlib import Path

from vmsilo.config import ResolvedVm
from vmsilo.host import proc
from vmsilo.host.paths import Paths

log = logging.getLogger(__name__)

MODULE = "vmsilo.dbusproxy.host_main"


class ProxyLauncher:
    def __init__(self, paths: Paths, owner: tuple[int, int] | None) -> None:
        self.paths = paths
        self.owner = owner  # the desktop user's uid, gid (system mode)
        self.running: dict[str, subprocess.Popen[bytes]] = {}
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
        if current is not None and current.poll() is None:
            return
        address = self.bus_address()
        if address is None:
            if not self._warned:
                log.info("no session bus for the desktop user: tray items and notifications "
                         "of VMs are not forwarded")
                self._warned = True
            return
        r, g, b = rvm.vm.colour_rgb
        python = os.environ.get("VMSILO_HELPER_PYTHON", sys.executable)
        argv = [python, "-m", MODULE, "--vm", rvm.name, "--colour", f"{r},{g},{b}",
                "--bus", address]
        argv += [] if dbus.tray else ["--no-tray"]
        argv += [] if dbus.notifications else ["--no-notifications"]
        env = {"VMSILO_CONTROL_SOCKET": str(self.paths.control_socket)}
        log_dir = self.paths.vm_log_dir(rvm.name)
        log_dir.mkdir(parents=True, exist_ok=True)
        uid, gid = self.owner if self.owner is not None else (None, None)
        with open(log_dir / "dbus-proxy.log", "ab") as log_file:
            self.running[rvm.name] = proc.spawn(
                argv, stdout=log_file, stderr=log_file, env=env, user=uid, group=gid,
                extra_groups=[] if uid is not None else None)
        log.info("VM %s: D-Bus proxy started (pid %d)", rvm.name, self.running[rvm.name].pid)

    def stop(self, name: str) -> None:
        process = self.running.pop(name, None)
        if process is not None:
            proc.stop(process)

    def stop_all(self) -> None:
        for name in list(self.running):
            self.stop(name)
