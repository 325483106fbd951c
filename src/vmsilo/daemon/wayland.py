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

import asyncio
import contextlib
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from vmsilo.config import ResolvedVm
from vmsilo.host import proc
from vmsilo.host.paths import Paths
from vmsilo.wayland.policy import security_context_app_id

log = logging.getLogger(__name__)

SECCONTEXT_WAIT_SECONDS = 10.0
FILTER_WAIT_SECONDS = 10.0


async def _appears(path: Path, seconds: float) -> bool:
    for _ in range(int(seconds / 0.05)):
        if path.exists():
            return True
        await asyncio.sleep(0.05)
    return path.exists()


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
        self.starting: dict[str, asyncio.Task[None]] = {}
        self._said: set[str] = set()

    def _once(self, key: str, message: str, *args: object) -> None:
        if key not in self._said:
            self._said.add(key)
            log.info(message, *args)

    def directory(self, name: str) -> Path:
        return self.paths.vm_runtime_dir(name) / "wayland"

    def start(self, rvm: ResolvedVm) -> None:
        """Bring the VM's Wayland path up in the background: the security-context helper
        talks to the compositor, and a slow or stuck compositor must not hold vmsilod up."""
        if not rvm.vm.gpu.wayland:
            return
        current = self.running.get(rvm.name)
        if rvm.name in self.starting or (current and all(p.poll() is None for p in current)):
            return
        self.stop(rvm.name)
        task = asyncio.create_task(self._bring_up(rvm))
        self.starting[rvm.name] = task
        task.add_done_callback(lambda done: self._started(rvm.name, done))

    def _started(self, name: str, task: asyncio.Task[None]) -> None:
        if self.starting.get(name) is task:
            del self.starting[name]
        if not task.cancelled() and task.exception() is not None:
            log.error("VM %s: the Wayland path did not come up: %s", name, task.exception())

    async def _bring_up(self, rvm: ResolvedVm) -> None:
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
        processes = self.running.setdefault(rvm.name, [])
        with open(log_dir / "wayland.log", "ab") as log_file:
            seccontext = proc.spawn(
                [python, "-m", "vmsilo.wayland.seccontext", "--display", str(compositor),
                 "--socket", str(directory / "seccontext.sock"), "--vm", rvm.name,
                 "--app-id", security_context_app_id(rvm.name, rvm.vm.colour_rgb)],
                stdout=subprocess.PIPE, stderr=log_file, env=env, **as_user)
            processes.append(seccontext)
            upstream = compositor
            if await self._security_context(rvm.name, seccontext):
                upstream = directory / "seccontext.sock"
            processes.append(proc.spawn(
                [python, "-m", "vmsilo.wayland.host_main", "--vm", rvm.name,
                 "--dir", str(directory), "--upstream", str(upstream)],
                stdout=log_file, stderr=log_file, env=env, **as_user))
            # waypipe's client half connects to its display as it starts, and gives up if
            # nothing listens there yet: the filter must be listening first.
            if not await _appears(directory / "filter.sock", FILTER_WAIT_SECONDS):
                log.warning("VM %s: the Wayland filter did not start; see wayland.log", rvm.name)
            processes.append(proc.spawn(
                [waypipe, "--no-gpu", "--socket", str(directory / "waypipe.sock"), "client"],
                stdout=log_file, stderr=log_file,
                env={"XDG_RUNTIME_DIR": str(directory),
                     "WAYLAND_DISPLAY": str(directory / "filter.sock")}, **as_user))
        log.info("VM %s: Wayland path up (compositor %s%s)", rvm.name, compositor,
                 ", security context" if upstream != compositor else "")

    async def _security_context(self, name: str, process: subprocess.Popen[bytes]) -> bool:
        """True once the helper reports ``ready``; otherwise it has ended (or is ended)."""
        assert process.stdout is not None
        try:
            line = (await asyncio.wait_for(asyncio.to_thread(process.stdout.readline),
                                           SECCONTEXT_WAIT_SECONDS)).decode(errors="replace")
        except TimeoutError:
            line = "no answer from the compositor"
        if line.strip() == "ready":
            return True
        proc.stop(process)
        if line.strip() == "unsupported":
            self._once("seccontext", "the compositor has no security-context protocol: VM "
                       "windows connect to it directly (still through vmsilo's filter)")
        else:
            log.warning("VM %s: no security context (%s); connecting directly", name,
                        line.strip() or f"exit {process.returncode}")
        return False

    def stop(self, name: str) -> None:
        task = self.starting.pop(name, None)
        if task is not None:
            task.cancel()
        for process in reversed(self.running.pop(name, [])):
            proc.stop(process)

    def stop_all(self) -> None:
        for name in list(self.running) + list(self.starting):
            self.stop(name)
