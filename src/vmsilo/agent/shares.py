"""Guest side of shared folders, at boot (``vmsilo-shares.service``, before the agent): give
``user`` the host user's uid and gid when the host asks (``vmsilo.uid``), then mount each
virtiofs share at its mount point, read-only where the host said so (the host enforces that
too; the guest's ``ro`` only makes writes fail early and clearly).

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


def adopt_ids(uid: int, gid: int) -> None:
    """Renumber ``user`` and its group (non-unique ids allowed: the host user may be, say,
    65534, which is also the guest's nobody); its home on the root is re-owned."""
    import grp
    import pwd

    entry = pwd.getpwnam(GUEST_USER)
    if grp.getgrnam(GUEST_USER).gr_gid != gid:
        subprocess.run(["groupmod", "-o", "-g", str(gid), GUEST_USER], check=True)
    if entry.pw_uid != uid:
        subprocess.run(["usermod", "-o", "-u", str(uid), GUEST_USER], check=True)
    subprocess.run(["chown", "-R", f"{uid}:{gid}", entry.pw_dir], check=False)


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
    if shares.uid is not None and shares.gid is not None:
        adopt_ids(shares.uid, shares.gid)
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
