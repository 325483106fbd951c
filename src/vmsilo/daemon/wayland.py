"""vmsilod's side of the Wayland path: while a VM with ``gpu.wayland`` runs, one sandbox runs
for it as the desktop user (``vmsilo.daemon.helpers``) holding the host half
(``vmsilo.wayland.host_main``), which runs the security-context helper, vmsilo's filter and
waypipe's client half in a private directory of its own. The sandbox sees the compositor's
socket (bound at ``/run/desktop/wayland``) and nothing else of the user's; its streams to
guest port 5003 come from its stream broker. Nothing is created for it on the host.

Without a compositor for the desktop user (no Wayland session, e.g. a server) or without
waypipe, nothing is shown and vmsilod says so once. ``VMSILO_HOST_WAYLAND_DISPLAY`` names the
compositor's socket explicitly (tests run a headless one).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
from pathlib import Path

from vmsilo.config import ResolvedVm
from vmsilo.daemon.broker import OpenPort
from vmsilo.daemon.helpers import (
    DESKTOP_DIR,
    HelperKind,
    HelperLauncher,
    LogOpener,
    sandbox_for,
)
from vmsilo.errors import UserError
from vmsilo.host.interpreter import helper_python
from vmsilo.host.paths import Paths
from vmsilo.host.proc import ProcessError
from vmsilo.host.sandbox import SYSTEM_DIRS
from vmsilo.protocol.wayland import PORT
from vmsilo.wayland.policy import security_context_app_id

log = logging.getLogger(__name__)

MODULE = "vmsilo.wayland.host_main"
LOG_NAME = "wayland.log"
COMPOSITOR_INSIDE = DESKTOP_DIR / "wayland"
# Each guest program holds one stream, and two more are parked: a desktop's worth of windows.
MAX_STREAMS = 64


def find_compositor(uid: int) -> Path | None:
    explicit = os.environ.get("VMSILO_HOST_WAYLAND_DISPLAY")
    if explicit:
        return Path(explicit)
    runtime = Path(f"/run/user/{uid}")
    with contextlib.suppress(OSError):
        for candidate in sorted(runtime.glob("wayland-*")):
            if not candidate.name.endswith(".lock") and candidate.is_socket():
                return candidate
    return None


class WaylandLauncher(HelperLauncher):
    kind = HelperKind("Wayland", PORT, MAX_STREAMS, LOG_NAME, COMPOSITOR_INSIDE)

    def __init__(self, paths: Paths, owner: tuple[int, int] | None, open_port: OpenPort,
                 open_log: LogOpener | None = None) -> None:
        super().__init__(paths, owner, open_port, open_log)
        self._said: set[str] = set()

    def _once(self, key: str, message: str, *args: object) -> None:
        if key not in self._said:
            self._said.add(key)
            log.info(message, *args)

    def start(self, rvm: ResolvedVm) -> None:
        if not rvm.vm.gpu.wayland or self.alive(rvm.name):
            return
        self.stop(rvm.name)
        uid = self.owner[0] if self.owner is not None else os.getuid()
        compositor = find_compositor(uid)
        if compositor is None:
            self._once("compositor", "no Wayland compositor for the desktop user: VM windows "
                       "are not shown")
            return
        found = shutil.which("waypipe")
        if found is None:
            self._once("waypipe", "waypipe is not installed: VM windows are not shown "
                       "(install the waypipe package)")
            return
        waypipe = Path(os.path.realpath(found))
        sandbox = sandbox_for(self.owner)
        if not any(Path(d) == waypipe.parent or Path(d) in waypipe.parents
                   for d in SYSTEM_DIRS):
            sandbox = dataclasses.replace(sandbox,
                                          ro_binds=(*sandbox.ro_binds, waypipe.parent))

        def command(broker_fd: int) -> list[str]:
            return [helper_python(), "-m", MODULE, "--vm", rvm.name,
                    "--broker-fd", str(broker_fd), "--compositor", str(COMPOSITOR_INSIDE),
                    "--app-id", security_context_app_id(rvm.name, rvm.vm.colour_rgb),
                    "--waypipe", str(waypipe)]

        try:
            running = self.launch(rvm.name, compositor, command, sandbox)
        except (UserError, ProcessError, OSError) as exc:
            log.error("VM %s: the Wayland path cannot start: %s", rvm.name, exc)
            return
        log.info("VM %s: Wayland path started (compositor %s, pid %d)", rvm.name, compositor,
                 running.helper.pid)
