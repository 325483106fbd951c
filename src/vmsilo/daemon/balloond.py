"""vmsilod's side of vmsilo-balloond: start it once (its own process and session, like the
VMMs, so it outlives a vmsilod restart and keeps balancing the VMs that do), or find the one
already running through its pidfile. It exits by itself when the runtime directory goes."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

from vmsilo.host import proc
from vmsilo.host.paths import Paths

log = logging.getLogger(__name__)

PIDFILE = "balloond.pid"
MARKER = "vmsilo.balloon.main"


def running_pid(paths: Paths) -> int | None:
    try:
        pid = int((paths.run_dir / PIDFILE).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if MARKER.encode() in cmdline else None


def ensure_running(paths: Paths, config_path: Path | None, extra_args: list[str]) -> int:
    pid = running_pid(paths)
    if pid is not None:
        log.info("vmsilo-balloond already runs (pid %d)", pid)
        return pid
    argv = [sys.executable, "-m", MARKER, "--run-dir", str(paths.run_dir)]
    if config_path is not None:
        argv += ["--config", str(config_path)]
    argv += extra_args
    paths.log_dir.mkdir(parents=True, exist_ok=True)
    with open(paths.log_dir / "balloond.log", "ab") as log_file:
        process = proc.spawn(argv, stdout=log_file, stderr=log_file)
    (paths.run_dir / PIDFILE).write_text(f"{process.pid}\n")
    log.info("started vmsilo-balloond (pid %d)", process.pid)
    return process.pid


def stop(paths: Paths) -> None:
    pid = running_pid(paths)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 15)
