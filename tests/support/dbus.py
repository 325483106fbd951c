"""A private dbus-daemon for tests and benches.

The daemon's socket file appears when it binds, a moment before it listens, so waiting for the
file races (a fresh-clone CI run once got "connection refused"). `--print-address` is written
only once the daemon accepts connections: reading that line is the readiness signal."""

import subprocess
from pathlib import Path
from typing import Any


def start_bus(socket_path: Path, **popen: Any) -> tuple["subprocess.Popen[bytes]", str]:
    """Start a session-type dbus-daemon listening on socket_path; return it and its address
    once it accepts connections. Extra keyword arguments go to Popen (user, group, ...)."""
    address = f"unix:path={socket_path}"
    process = subprocess.Popen(
        ["dbus-daemon", "--session", "--nofork", "--nopidfile", f"--address={address}",
         "--print-address=1"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, **popen)
    assert process.stdout is not None
    printed = process.stdout.readline()
    if not printed:
        process.wait(10)
        raise RuntimeError(f"dbus-daemon on {socket_path} exited with {process.returncode}")
    # The pipe stays open: the daemon writes nothing more to it, and closing our end would turn
    # any later write into a SIGPIPE that kills the bus mid-test.
    return process, address
