"""vmsilod's side of vmsilo-balloond: start it once (its own process and session, like the
VMMs, so it outlives a vmsilod restart and keeps balancing the VMs that do), or find the one
already running through the identity vmsilod recorded for it (``host/procid.py``: pid, start
time and executable, in the root-owned run directory; never a word in a process's argv). It
exits by itself when the runtime directory goes."""

from __future__ import annotations

import json
import logging
import os
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
