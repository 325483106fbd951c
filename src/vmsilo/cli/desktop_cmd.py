"""``vmsilo desktop install``: put every VM's applications in the desktop user's menu, one
folder per VM (see ``vmsilo.desktop.install``). Run as root, the files are written by a child
that has dropped to the home's owner (``vmsilo.desktop.write_menu``): root never writes into a
user's home itself; run as a user, into one's own. The output is a table per VM, then every
entry left out and every key dropped from an entry (a translation whose locale is not
valid, a category that is not registered, …), each on its own line with its reason."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from vmsilo.cli.options import add_config_option
from vmsilo.cli.output import output_console
from vmsilo.config import load_config
from vmsilo.desktop.install import Report
from vmsilo.desktop.menu import refresh


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


def run_install(args: argparse.Namespace) -> int:
    config = load_config(args.config).config
    home, report, entries_by_vm = refresh(config, args.home)
    print_report(output_console(), home, report, entries_by_vm)
    return 0


def print_report(console: Console, home: Path, report: Report,
                 entries_by_vm: dict[str, list[Any]]) -> None:
    """A table of applications per VM, then one line per entry left out (``left out: <vm>:
    <file>: <reason>``) and per key dropped from an entry that was kept (``dropped: <vm>:
    <file>: <key>: <why>``), then the count of files written and removed."""
    table = Table(title=f"Menu entries in {home}")
    for column in ("VM", "applications", "left out", "keys dropped"):
        table.add_column(column)
    for name, entries in entries_by_vm.items():
        left_out = [r for r in report.rejected if r.startswith(f"{name}: ")]
        dropped = [r for r in report.dropped if r.startswith(f"{name}: ")]
        table.add_row(name, str(len(entries) - len(left_out)), str(len(left_out)),
                      str(len(dropped)))
    console.print(table)
    for reason in report.rejected:
        console.print(f"left out: {reason}", markup=False, highlight=False)
    for reason in report.dropped:
        console.print(f"dropped: {reason}", markup=False, highlight=False)
    console.print(f"{len(report.written)} files written, {len(report.removed)} removed")
