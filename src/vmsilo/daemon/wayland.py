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
from dataclasses import dataclass
from pathlib import Path

from vmsilo.config import ResolvedVm
from vmsilo.daemon.broker import OpenPort, StreamBroker
from vmsilo.daemon.helpers import (
    DESKTOP_DIR,
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


@dataclass
class Running:
    helper: Helper
    broker: StreamBroker


class WaylandLauncher:
    def __init__(self, paths: Paths, owner: tuple[int, int] | None, open_port: OpenPort,
                 open_log: LogOpener | None = None) -> None:
        self.paths = paths
        self.owner = owner  # the desktop user's uid, gid (system mode)
        self.open_port = open_port  # Supervisor.open_port
        self.open_log = open_log or log_opener(paths)
        self.running: dict[str, Running] = {}
        self._said: set[str] = set()

    def _once(self, key: str, message: str, *args: object) -> None:
        if key not in self._said:
            self._said.add(key)
            log.info(message, *args)

    def start(self, rvm: ResolvedVm) -> None:
        if not rvm.vm.gpu.wayland:
            return
        current = self.running.get(rvm.name)
        if current is not None and current.helper.running():
            return
        self.stop(rvm.name)
        uid = self.owner[0] if self.owner is not None else os.getuid()
        compositor = find_compositor(uid)
        if compositor is None:
            self._once("compositor", "no Wayland compositor for the desktop user: VM windows "
                       "are not shown")
            return
        waypipe = shutil.which("waypipe")
        if waypipe is None:
            self._once("waypipe", "waypipe is not installed: VM windows are not shown "
                       "(install the waypipe package)")
            return
        try:
            self.running[rvm.name] = self._spawn(rvm, compositor, Path(waypipe))
        except (UserError, ProcessError, OSError) as exc:
            log.error("VM %s: the Wayland path cannot start: %s", rvm.name, exc)
            return
        log.info("VM %s: Wayland path started (compositor %s, pid %d)", rvm.name, compositor,
                 self.running[rvm.name].helper.pid)

    def _spawn(self, rvm: ResolvedVm, compositor: Path, waypipe: Path) -> Running:
        compositor_fd = open_desktop_socket(compositor, self.owner)
        broker = StreamBroker(rvm.name, "Wayland", PORT, self.open_port, MAX_STREAMS)
        argv = [helper_python(), "-m", MODULE, "--vm", rvm.name,
                "--broker-fd", str(broker.helper_fd), "--compositor", str(COMPOSITOR_INSIDE),
                "--app-id", security_context_app_id(rvm.name, rvm.vm.colour_rgb),
                "--waypipe", str(os.path.realpath(waypipe))]
        sandbox = sandbox_for(self.owner)
        real = Path(os.path.realpath(waypipe))
        if not any(Path(d) == real or Path(d) in real.parents for d in SYSTEM_DIRS):
            sandbox = dataclasses.replace(sandbox, ro_binds=(*sandbox.ro_binds, real.parent))
        try:
            log_fd = self.open_log(rvm.name, LOG_NAME)
            try:
                helper = Helper.spawn(f"VM {rvm.name}: Wayland", sandbox, argv, log_fd=log_fd,
                                      pass_fds=(broker.helper_fd, compositor_fd),
                                      extra_bwrap=bind_fd_args(compositor_fd,
                                                               COMPOSITOR_INSIDE))
            finally:
                os.close(log_fd)
        except BaseException:
            broker.close()
            raise
        finally:
            os.close(compositor_fd)
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
