"""Refreshing the desktop user's menu from the config and the built images: which home, which
owner, which image of each VM (see ``vmsilo.desktop.install`` for the files). Used by
``vmsilo desktop install``, ``vmsilo image build`` and vmsilod."""

from __future__ import annotations

import os
import pwd
from pathlib import Path
from typing import Any

from vmsilo.config import resolve
from vmsilo.config.model import VmsiloConfig
from vmsilo.desktop.install import Report, Targets, install
from vmsilo.host.paths import Paths
from vmsilo.image import manifest
from vmsilo.image.spec import agent_digest, spec_for_vm


def refresh(config: VmsiloConfig, home: Path | None = None) -> tuple[Path, Report,
                                                                     dict[str, list[Any]]]:
    """Write the menu for every VM of ``config`` (see module docstring)."""
    resolved = resolve(config)
    paths = Paths.for_mode()
    digest = agent_digest()
    entries_by_vm = {}
    icon_dirs = {}
    for name, rvm in resolved.vms.items():
        spec = spec_for_vm(name, rvm.vm, suite=config.image.suite, mirror=config.image.mirror,
                           agent=digest)
        entries_by_vm[name] = manifest.desktop_entries(paths.image(spec.digest()))
        icon_dirs[name] = paths.image(spec.digest()) / "icons"
    owner = None
    if home is None:
        if os.geteuid() == 0:
            entry = pwd.getpwnam(config.user)
            home, owner = Path(entry.pw_dir), (entry.pw_uid, entry.pw_gid)
        else:
            home = Path.home()
        if not home.is_dir():  # never create an account's home (e.g. /nonexistent)
            raise FileNotFoundError(f"{home} is not a directory")
    return home, install(entries_by_vm, Targets.for_home(home), owner, icon_dirs), entries_by_vm


def refresh_quietly(config: VmsiloConfig) -> str:
    """``refresh`` for callers whose own work must not fail on the menu (image build,
    vmsilod): a one-line outcome."""
    try:
        home, report, _ = refresh(config)
    except (OSError, KeyError) as exc:
        return f"menu not refreshed: {exc}"
    return (f"menu refreshed in {home}: {len(report.written)} files written, "
            f"{len(report.removed)} removed")
