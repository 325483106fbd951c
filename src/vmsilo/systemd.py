"""What vmsilo's services need from systemd, without depending on it: readiness notification
(``Type=notify``) and a listening socket passed by a socket unit. Standard library only: the
guest's services use it too (it is copied into the image)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

LISTEN_FD = 3  # the first descriptor systemd passes (SD_LISTEN_FDS_START)


def notify(state: str) -> None:
    """Send ``state`` (e.g. ``READY=1``) to systemd; nothing when not run by systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(state.encode(), address)


def inherited_listener() -> socket.socket | None:
    """The one listening socket a socket unit passed, or None if there is not exactly one."""
    if os.environ.get("LISTEN_FDS") != "1":
        return None
    return socket.socket(fileno=LISTEN_FD)


def wait_for_path(path: Path, seconds: float) -> bool:
    """Wait until ``path`` exists (something started alongside makes it); True if it does."""
    deadline = time.monotonic() + seconds
    while not path.exists():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True
