"""vmsilod's side of the Wayland path: while a VM with ``gpu.wayland`` runs, three processes
run for it as the desktop user, in the VM's Wayland directory (``/run/vmsilo/<vm>/wayland``):

1. ``vmsilo-wayland-seccontext`` makes ``seccontext.sock`` with the compositor's
   security-context protocol (skipped, with one log line, when the compositor lacks it);
2. the host half (``vmsilo.wayland.host_main``): the filter on ``filter.sock``, connected to
   the security-context socket or the compositor, and the bridge from guest port 5003;
3. waypipe's client half on ``waypipe.sock``, whose display is the filter.

Without a compositor for the desktop user (no Wayland session, e.g. a server) or without
waypipe, nothing is shown and vmsilod says so once. ``VMSILO_HOST_WAYLAND_DISPLAY`` names the
compositor's socket explicitly (tests run a headless one); ``VMSILO_HELPER_PYTHON`` as for the
D-Bus proxy.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from vmsilo.config import ResolvedVm
from vmsilo.host import proc
from vmsilo.host.paths import Paths
from vmsilo.wayland.policy import security_context_app_id

log = logging.getLogger(__name__)

SECCONTEXT_WAIT_SECONDS = 10.0


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


class WaylandLauncher:
    def __init__(self, paths: Paths, owner: tuple[int, int] | None) -> None:
        self.paths = paths
        self.owner = owner
        self.running: dict[str, list[subprocess.Popen[bytes]]] = {}
        self._said: set[str] = set()

    def _once(self, key: str, message: str, *args: object) -> None:
        if key not in self._said:
            self._said.add(key)
            log.info(message, *args)

    def directory(self, name: str) -> Path:
        return self.paths.vm_runtime_dir(name) / "wayland"

    def start(self, rvm: ResolvedVm) -> None:
        if not rvm.vm.gpu.wayland:
            return
        current = self.running.get(rvm.name)
        if current and all(p.poll() is None for p in current):
            return
        self.stop(rvm.name)
        uid, gid = self.owner if self.owner is not None else (os.getuid(), os.getgid())
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
        directory = self.directory(rvm.name)
        directory.mkdir(mode=0o700, exist_ok=True)
        os.chown(directory, uid, gid)
        log_dir = self.paths.vm_log_dir(rvm.name)
        log_dir.mkdir(parents=True, exist_ok=True)
        python = os.environ.get("VMSILO_HELPER_PYTHON", sys.executable)
        as_user: dict[str, Any] = ({"user": uid, "group": gid, "extra_groups": []}
                   if self.owner is not None else {})
        env = {"VMSILO_CONTROL_SOCKET": str(self.paths.control_socket)}
        processes: list[subprocess.Popen[bytes]] = []
        with open(log_dir / "wayland.log", "ab") as log_file:
            upstream = compositor
            seccontext = self._security_context(rvm, python, compositor, directory, env,
                                                as_user, log_file)
            if seccontext is not None:
                processes.append(seccontext)
                upstream = directory / "seccontext.sock"
            processes.append(proc.spawn(
                [python, "-m", "vmsilo.wayland.host_main", "--vm", rvm.name,
                 "--dir", str(directory), "--upstream", str(upstream)],
                stdout=log_file, stderr=log_file, env=env, **as_user))
            for _ in range(100):  # the filter listens before waypipe may connect to it
                if (directory / "filter.sock").exists():
                    break
                time.sleep(0.05)
            processes.append(proc.spawn(
                [waypipe, "--no-gpu", "--socket", str(directory / "waypipe.sock"), "client"],
                stdout=log_file, stderr=log_file,
                env={"XDG_RUNTIME_DIR": str(directory),
                     "WAYLAND_DISPLAY": str(directory / "filter.sock")}, **as_user))
        self.running[rvm.name] = processes
        log.info("VM %s: Wayland path up (compositor %s%s)", rvm.name, compositor,
                 ", security context" if seccontext is not None else "")

    def _security_context(self, rvm: ResolvedVm, python: str, compositor: Path,
                          directory: Path, env: dict[str, str], as_user: dict[str, Any],
                          log_file: IO[bytes]) -> subprocess.Popen[bytes] | None:
        app_id = security_context_app_id(rvm.name, rvm.vm.colour_rgb)
        process = proc.spawn(
            [python, "-m", "vmsilo.wayland.seccontext", "--display", str(compositor),
             "--socket", str(directory / "seccontext.sock"), "--vm", rvm.name,
             "--app-id", app_id],
            stdout=subprocess.PIPE, stderr=log_file, env=env, **as_user)
        assert process.stdout is not None
        line = process.stdout.readline().decode(errors="replace").strip()
        if line == "ready":
            return process
        process.wait(SECCONTEXT_WAIT_SECONDS)
        if line == "unsupported":
            self._once("seccontext", "the compositor has no security-context protocol: VM "
                       "windows connect to it directly (still through vmsilo's filter)")
        else:
            log.warning("VM %s: no security context (%s); connecting directly", rvm.name,
                        line or f"exit {process.returncode}")
        return None

    def stop(self, name: str) -> None:
        for process in reversed(self.running.pop(name, [])):
            if process.poll() is None:
                process.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(5)
                if process.poll() is None:
                    process.kill()
            process.wait()

    def stop_all(self) -> None:
        for name in list(self.running):
            self.stop(name)
