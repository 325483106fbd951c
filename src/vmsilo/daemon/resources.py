"""Host resources a VM holds while it runs, all in vmsilod's own directories.

- runtime directory ``<run>/<vm>/``: root's, mode 0700, made fresh at each start; it holds the
  launch spec, the network record, the processes' identities and the sockets vmsilod binds
  for the VMM (QMP, balloon QMP, console, channel) and for virtiofsd;
- log directory ``<logs>/<vm>/``: root's, mode 0750 with the desktop user's group (they may
  read their VMs' logs, never write or replace them); files 0640;
- overlay disk ``<state>/<vm>/overlay.raw``: root's, mode 0600; the VMM gets descriptors.

Every file is opened relative to its directory's descriptor without following links
(``host/safefs.py``); nothing is ever chowned to the desktop user. Release works from the
launch spec alone, so a re-adopted VM is cleaned up exactly like one started now.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from pathlib import Path

from vmsilo.errors import UserError
from vmsilo.host import logpump, safefs
from vmsilo.host.safefs import Dir
from vmsilo.hypervisor.spec import LaunchSpec, OverlayKind, spec_to_json

# The guest formats the overlay with ext4 at first boot and needs room for its metadata and
# the first writes; below this much free space the start is refused instead of failing later
# inside the guest with I/O errors.
OVERLAY_MIN_FREE = 256 * 1024 * 1024
RUNTIME_MODE = 0o700
LOG_DIR_MODE = 0o750
LOG_FILE_MODE = 0o640
STATE_MODE = 0o700
RUN_ROOT_MODE = 0o755  # the control socket lives here: the desktop user must reach it

SPEC_FILE = "launch.json"
CID_FILE = "cid"
PROCESSES_FILE = "processes.json"  # identities of the VMM and its jail (host/procid.py)


def acquire_runtime_dir(spec: LaunchSpec) -> Dir:
    """The VM's runtime directory, empty but for its cid and launch spec."""
    runtime_dir = spec.layout.runtime_dir
    with Dir.secure(runtime_dir.parent, mode=RUN_ROOT_MODE) as parent:
        runtime = parent.sub(runtime_dir.name, mode=RUNTIME_MODE, fresh=True)
    try:
        runtime.write_atomic(CID_FILE, f"{spec.cid}\n", mode=0o644)
        runtime.write_atomic(SPEC_FILE, json.dumps(spec_to_json(spec), indent=1))
    except BaseException:
        runtime.close()
        raise
    return runtime


def open_runtime_dir(runtime_dir: Path) -> Dir:
    """An existing runtime directory (``FileNotFoundError`` if there is none)."""
    return Dir.secure(runtime_dir, mode=RUNTIME_MODE, create=False)


def release_runtime_dir(spec: LaunchSpec) -> None:
    safefs.remove_tree(spec.layout.runtime_dir)


def release_runtime_dir_at(runtime_dir: Path) -> None:
    """Remove a runtime directory whose launch spec could not be used."""
    safefs.remove_tree(runtime_dir)


def open_log_dir(spec: LaunchSpec, group: int | None) -> Dir:
    """The VM's log directory, readable by ``group`` (the desktop user's) when given."""
    logs = Dir.reclaimed(spec.layout.log_dir, mode=LOG_DIR_MODE)
    if group is not None and os.geteuid() == 0:
        os.fchown(logs.fd, 0, group)
        os.fchmod(logs.fd, LOG_DIR_MODE)
    return logs


def open_log(logs: Dir, name: str, group: int | None, *, rotate: bool = False) -> int:
    """A log file for appending (a descriptor to hand to a child). With ``rotate`` the
    previous one is kept as ``<name>.1`` and a new one begun."""
    if rotate and logs.exists(name):
        logs.rename(name, f"{name}.1")
    fd = logs.open(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, LOG_FILE_MODE)
    if group is not None and os.geteuid() == 0:
        os.fchown(fd, 0, group)
        os.fchmod(fd, LOG_FILE_MODE)
    return fd


def pumped_log(log_dir: Path, name: str, group: int | None) -> int:
    """A writable descriptor for a child's output into the capped log ``name`` of
    ``log_dir`` (``host/logpump.py``; the previous one kept as ``<name>.1``). The caller
    closes it once the child holds its copy; the pump ends when the child's copies close."""
    with Dir.reclaimed(log_dir, mode=LOG_DIR_MODE) as logs:
        if group is not None and os.geteuid() == 0:
            os.fchown(logs.fd, 0, group)
            os.fchmod(logs.fd, LOG_DIR_MODE)
        pump = logpump.start(logs, [name], rotate_at_start=True, mode=LOG_FILE_MODE,
                             group=group)
    try:
        return os.dup(pump.fd(name))
    finally:
        pump.close_write_ends()


def acquire_overlay(spec: LaunchSpec) -> None:
    """A blank sparse file of the overlay's size: every start begins with an empty root
    overlay, so nothing written in a previous run survives."""
    if spec.overlay is not OverlayKind.DISK or spec.overlay_disk is None:
        return
    path = spec.overlay_disk.path
    with Dir.reclaimed(path.parent, mode=STATE_MODE) as state:
        stat = os.fstatvfs(state.fd)
        free = stat.f_bavail * stat.f_frsize
        if free < OVERLAY_MIN_FREE:
            raise UserError(
                f"VM {spec.name}: only {free // (1024 * 1024)} MiB free in {path.parent} for "
                f"the root overlay (at least {OVERLAY_MIN_FREE // (1024 * 1024)} MiB needed); "
                'free some space or set rootOverlay.type = "tmpfs"')
        fd = state.create(path.name, 0o600)
        try:
            os.ftruncate(fd, spec.overlay_size)
        except OSError as exc:
            state.unlink(path.name)
            if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                raise UserError(
                    f"VM {spec.name}: cannot create the {spec.overlay_size} byte root overlay "
                    f"{path}: {exc.strerror}; free some space or lower rootOverlay.size"
                ) from exc
            raise
        finally:
            os.close(fd)


def release_overlay(spec: LaunchSpec) -> None:
    if spec.overlay_disk is None:
        return
    path = spec.overlay_disk.path
    with contextlib.suppress(FileNotFoundError), Dir.secure(path.parent, create=False) as state:
        state.unlink(path.name)
