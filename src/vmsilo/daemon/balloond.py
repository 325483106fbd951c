"""vmsilod's side of vmsilo-balloond: start it once (its own process and session, like the
VMMs, so it outlives a vmsilod restart and keeps balancing the VMs that do), or find the one
already running through the identity vmsilod recorded for it (``host/procid.py``: pid, start
time and executable, in the root-owned run directory; never a word in a process's argv). It
exits by itself when the runtime directory goes, and when vmsilod's control socket is gone with
no VM left (``vmsilo.balloon.daemon``). vmsilod's end for good stops it: ``stop_for_good`` at
an exit that leaves no VM running (an exit with VMs running is a restart to be: the next
vmsilod re-adopts them, and balloond keeps balancing them meanwhile)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import sys
from pathlib import Path

from vmsilo.errors import UserError
from vmsilo.host import proc
from vmsilo.host.paths import Paths
from vmsilo.host.procid import ProcessIdentity, kill_if_alive
from vmsilo.host.safefs import Dir

log = logging.getLogger(__name__)

PIDFILE = "balloond.pid"  # its identity, as JSON
MARKER = "vmsilo.balloon.main"  # the module it runs


def _recorded(paths: Paths) -> ProcessIdentity | None:
    try:
        with Dir.secure(paths.run_dir, create=False) as run:
            return ProcessIdentity.from_json(json.loads(run.read(PIDFILE)))
    except (OSError, ValueError, UserError):
        return None


def running_pid(paths: Paths) -> int | None:
    """The running balloond's pid, if the recorded identity still matches a live process."""
    identity = _recorded(paths)
    return identity.pid if identity is not None and identity.alive() else None


def ensure_running(paths: Paths, config_path: Path | None, extra_args: list[str]) -> int:
    pid = running_pid(paths)
    if pid is not None:
        log.info("vmsilo-balloond already runs (pid %d)", pid)
        return pid
    argv = [sys.executable, "-m", MARKER, "--run-dir", str(paths.run_dir)]
    if config_path is not None:
        argv += ["--config", str(config_path)]
    argv += extra_args
    with Dir.reclaimed(paths.log_dir, mode=0o750) as logs:
        log_fd = logs.open("balloond.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        process = proc.spawn(argv, stdout=log_fd, stderr=log_fd)
    finally:
        os.close(log_fd)
    identity = ProcessIdentity.of(process.pid)
    if identity is not None:
        with Dir.secure(paths.run_dir, create=False) as run:
            run.write_atomic(PIDFILE, json.dumps(identity.to_json()))
    log.info("started vmsilo-balloond (pid %d)", process.pid)
    return process.pid


def stop(paths: Paths) -> None:
    identity = _recorded(paths)
    if identity is not None:
        kill_if_alive(identity, 15)


# --- vmsilod's end for good (issue 15: ``make demo`` left balloond behind) --------------------

STOP_GRACE = 5.0  # seconds balloond gets to close its VMM sessions before SIGKILL


def stop_for_good(paths: Paths, grace: float = STOP_GRACE) -> bool:
    """End the recorded balloond and wait for it (SIGTERM, then SIGKILL after ``grace``
    seconds), then drop its record. Signals go through a pidfd of the checked identity, so a
    reused pid is never hit. Returns True when one was running."""
    identity = _recorded(paths)
    fd = identity.pidfd() if identity is not None else None
    if identity is None or fd is None:
        _forget(paths)
        return False
    try:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(fd, signal.SIGTERM)
        # A pidfd is readable once its process has exited (pidfd_open(2)).
        if not select.select([fd], [], [], grace)[0]:
            log.warning("vmsilo-balloond (pid %d) did not exit in %.1f s; killing it",
                        identity.pid, grace)
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            select.select([fd], [], [], grace)
    finally:
        os.close(fd)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(identity.pid, os.WNOHANG)  # our child unless a vmsilod restart came between
    _forget(paths)
    log.info("stopped vmsilo-balloond (pid %d)", identity.pid)
    return True


def _forget(paths: Paths) -> None:
    with contextlib.suppress(OSError, UserError), \
            Dir.secure(paths.run_dir, create=False) as run:
        run.unlink(PIDFILE)
