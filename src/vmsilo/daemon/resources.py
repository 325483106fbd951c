"""Host resources a VM holds while it runs: its runtime directory and its overlay disk.

Each ``acquire_*`` function makes one resource and returns how to release it; ``release_*``
functions work from the launch spec alone, so a re-adopted VM (whose start happened in an
earlier vmsilod) is cleaned up exactly like one started now.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from pathlib import Path

from vmsilo.errors import UserError
from vmsilo.hypervisor.spec import LaunchSpec, OverlayKind, spec_to_json

# The guest formats the overlay with ext4 at first boot and needs room for its metadata and
# the first writes; below this much free space the start is refused instead of failing later
# inside the guest with I/O errors.
OVERLAY_MIN_FREE = 256 * 1024 * 1024


def acquire_runtime_dir(spec: LaunchSpec, owner: tuple[int, int] | None) -> None:
    runtime = spec.layout.runtime_dir
    if runtime.exists():  # leftovers of a VM that died without cleanup
        shutil.rmtree(runtime)
    runtime.mkdir(parents=True, mode=0o750)
    if owner is not None:
        os.chown(runtime, *owner)
    spec.layout.cid_file.write_text(f"{spec.cid}\n")
    _rotate_logs(spec, owner)
    spec.layout.spec_file.write_text(json.dumps(spec_to_json(spec), indent=1))


def _rotate_logs(spec: LaunchSpec, owner: tuple[int, int] | None) -> None:
    """Each start gets fresh logs; the previous start's are kept as ``*.log.1``."""
    log_dir = spec.layout.log_dir
    log_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    if owner is not None:
        os.chown(log_dir, *owner)
    for log in (spec.layout.console_log, spec.layout.vmm_log):
        if log.exists():
            log.replace(log.with_name(log.name + ".1"))


def release_runtime_dir(spec: LaunchSpec) -> None:
    shutil.rmtree(spec.layout.runtime_dir, ignore_errors=True)


def acquire_overlay(spec: LaunchSpec, owner: tuple[int, int] | None) -> None:
    """A blank sparse file of the overlay's size: every start begins with an empty root
    overlay, so nothing written in a previous run survives."""
    if spec.overlay is not OverlayKind.DISK or spec.overlay_disk is None:
        return
    path = spec.overlay_disk.path
    path.parent.mkdir(parents=True, exist_ok=True)
    stat = os.statvfs(path.parent)
    free = stat.f_bavail * stat.f_frsize
    if free < OVERLAY_MIN_FREE:
        raise UserError(
            f"VM {spec.name}: only {free // (1024 * 1024)} MiB free in {path.parent} for the "
            f"root overlay (at least {OVERLAY_MIN_FREE // (1024 * 1024)} MiB needed); free "
            'some space or set rootOverlay.type = "tmpfs"'
        )
    path.unlink(missing_ok=True)
    try:
        with open(path, "xb") as disk:
            disk.truncate(spec.overlay_size)
        if owner is not None:
            os.chown(path, *owner)
    except OSError as exc:
        path.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise UserError(
                f"VM {spec.name}: cannot create the {spec.overlay_size} byte root overlay "
                f"{path}: {exc.strerror}; free some space or lower rootOverlay.size"
            ) from exc
        raise


def release_overlay(spec: LaunchSpec) -> None:
    if spec.overlay_disk is not None:
        with contextlib.suppress(FileNotFoundError):
            spec.overlay_disk.path.unlink()


def stale_sockets(spec: LaunchSpec) -> list[Path]:
    layout = spec.layout
    return [layout.control_socket, layout.channel_socket, layout.console_socket]


def release_runtime_dir_at(runtime_dir: Path) -> None:
    """Remove a runtime directory whose launch spec could not be read."""
    shutil.rmtree(runtime_dir, ignore_errors=True)
