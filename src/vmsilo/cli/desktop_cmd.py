"""``vmsilo desktop install``: put every VM's applications in the desktop user's menu, one
folder per VM (see ``vmsilo.desktop.install``). Run as root it writes into the configured
user's home (files owned by that user); run as a user, into one's own."""

from __future__ import annotations

import argparse
import json
import os
import pwd
from pathlib import Path
from typing import Any

from rich.table import Table

from vmsilo.cli.options import add_config_option
from vmsilo.cli.output import output_console
from vmsilo.config import load_config, resolve
from vmsilo.config.model import VmsiloConfig
from vmsilo.desktop.install import Report, Targets, install
from vmsilo.host.paths import Paths
from vmsilo.image.manifest import MANIFEST
from vmsilo.image.spec import agent_digest, spec_for_vm


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("desktop", help="VM applications in the host menu")
    commands = parser.add_subparsers(dest="desktop_command", metavar="SUBCOMMAND",
                                     required=True)
    install_cmd = commands.add_parser("install", help="write (or refresh) the menu entries")
    add_config_option(install_cmd)
    install_cmd.add_argument("--home", type=Path,
                             help="the home to write into (default: the configured user's "
                                  "when root, else yours)")
    install_cmd.set_defaults(func=run_install)


def _entries(image_dir: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads((image_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return []
    entries = data.get("desktopEntries", []) if isinstance(data, dict) else []
    return [e for e in entries if isinstance(e, dict)]


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
        entries_by_vm[name] = _entries(paths.image(spec.digest()))
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


def run_install(args: argparse.Namespace) -> int:
    config = load_config(args.config).config
    home, report, entries_by_vm = refresh(config, args.home)
    console = output_console()
    table = Table(title=f"Menu entries in {home}")
    for column in ("VM", "applications", "left out"):
        table.add_column(column)
    for name, entries in entries_by_vm.items():
        left_out = [r for r in report.rejected if r.startswith(f"{name}: ")]
        table.add_row(name, str(len(entries) - len(left_out)), str(len(left_out)))
    console.print(table)
    for reason in report.rejected:
        console.print(f"left out: {reason}", markup=False, highlight=False)
    console.print(f"{len(report.written)} files written, {len(report.removed)} removed")
    return 0
