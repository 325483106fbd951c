"""Guest side of shared folders, at boot (``vmsilo-shares.service``, before the agent): mount
each virtiofs share at its mount point, read-only where the host said so (the host enforces
that too; the guest's ``ro`` only makes writes fail early and clearly). The guest's ``user``
keeps its ids: the host's virtiofsd maps them to the desktop user's.

A share whose device is not there yet is retried for a few seconds (the virtiofs driver binds
as its module loads); one that still fails is reported and the others are mounted anyway.
Stdlib only.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from vmsilo.protocol.shareparams import GuestShare, GuestShares, ShareParamError, decode

GUEST_USER = "user"
MOUNT_ATTEMPTS = 20
MOUNT_RETRY_SECONDS = 0.25


def mount_share(share: GuestShare) -> str | None:
    """Mount one share; None on success, else why not."""
    Path(share.mount_point).mkdir(parents=True, exist_ok=True)
    options = ["-o", "ro"] if share.readonly else []
    error = ""
    for _ in range(MOUNT_ATTEMPTS):
        result = subprocess.run(
            ["mount", "-t", "virtiofs", *options, share.tag, share.mount_point],
            capture_output=True,
            text=True,
        )
        if result.returncode == 0:
            return None
        error = result.stderr.strip()
        time.sleep(MOUNT_RETRY_SECONDS)
    return error or "mount failed"


def apply(shares: GuestShares) -> int:
    failures = 0
    for share in shares.shares:
        problem = mount_share(share)
        if problem is None:
            print(
                f"vmsilo-shares: {share.tag} on {share.mount_point}"
                f"{' (read-only)' if share.readonly else ''}"
            )
        else:
            failures += 1
            print(
                f"vmsilo-shares: cannot mount {share.tag} on {share.mount_point}: {problem}",
                file=sys.stderr,
            )
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    cmdline_path = (argv or sys.argv[1:] or ["/proc/cmdline"])[0]
    try:
        shares = decode(Path(cmdline_path).read_text())
    except ShareParamError as exc:
        print(f"vmsilo-shares: bad kernel command line: {exc}", file=sys.stderr)
        return 1
    return apply(shares)


if __name__ == "__main__":
    sys.exit(main())
