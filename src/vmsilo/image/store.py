"""The image store: which images exist, which VMs of the config use them, garbage collection.

An image directory is complete when it holds ``manifest.json`` (written last, before the
rename into place). Anything else in the store is either a build in progress
(``.build-*``), the build logs, or the apt download cache; ``gc`` removes images no VM uses,
their logs, and build directories abandoned by a killed build.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmsilo.host.paths import Paths
from vmsilo.image import manifest
from vmsilo.image.build import log_path
from vmsilo.image.spec import ImageSpec, agent_digest, spec_for_vm

# A build directory untouched this long belongs to a build that died.
ABANDONED_BUILD_SECONDS = 6 * 3600


def specs_for_config(config: Any, names: list[str] | None = None) -> dict[str, ImageSpec]:
    """VM name -> image spec, for the named VMs (default: all) of a loaded config."""
    vms: Mapping[str, Any] = config.vms
    chosen = names or sorted(vms)
    unknown = [name for name in chosen if name not in vms]
    if unknown:
        known = ", ".join(sorted(vms)) or "none"
        raise_unknown(unknown, known)
    agent = agent_digest()
    image = config.image
    return {
        name: spec_for_vm(name, vms[name], suite=image.suite, mirror=image.mirror, agent=agent)
        for name in chosen
    }


def raise_unknown(unknown: list[str], known: str) -> None:
    from vmsilo.errors import UserError

    raise UserError(
        f"no VM named {', '.join(unknown)} in the config (VMs: {known}); "
        "check the name or add [vms.<name>] to the config"
    )


def users_by_digest(specs: Mapping[str, ImageSpec]) -> dict[str, list[str]]:
    """Image digest -> the VMs that share that image."""
    users: dict[str, list[str]] = {}
    for name, spec in sorted(specs.items()):
        users.setdefault(spec.digest(), []).append(name)
    return users


def list_images(paths: Paths) -> list[manifest.ImageInfo]:
    if not paths.image_dir.is_dir():
        return []
    found = []
    for child in sorted(paths.image_dir.iterdir()):
        if child.is_dir() and not child.name.startswith(".") and child.name != "logs":
            info = manifest.read(child)
            if info is not None:
                found.append(info)
    return found


def tree_size(path: Path) -> int:
    if path.is_file() or path.is_symlink():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


@dataclass(frozen=True)
class Removed:
    path: Path
    size: int


def collect_garbage(paths: Paths, keep: set[str], *, now: float | None = None) -> list[Removed]:
    """Remove images whose digest is not in ``keep``, their logs, and abandoned builds."""
    removed: list[Removed] = []
    if not paths.image_dir.is_dir():
        return removed
    now = time.time() if now is None else now
    for child in sorted(paths.image_dir.iterdir()):
        if not child.is_dir() or child.name == "logs":
            continue
        if child.name.startswith(".build-"):
            if now - child.stat().st_mtime < ABANDONED_BUILD_SECONDS:
                continue  # possibly a build running right now
        elif child.name in keep or manifest.read(child) is None:
            continue
        size = tree_size(child)
        shutil.rmtree(child)
        removed.append(Removed(child, size))
        log = log_path(paths, child.name)
        if log.exists():
            size = log.stat().st_size
            log.unlink()
            removed.append(Removed(log, size))
    return removed
