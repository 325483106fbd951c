"""``vmsilo balloon status``: what vmsilo-balloond last did, per VM: balloon size and target,
the guest's available memory and floor, and the last decision with its reason; and the host's
available memory. It reads the status file balloond rewrites every tick."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from rich.table import Table

from vmsilo.balloon.daemon import STATUS_FILE
from vmsilo.cli.output import output_console
from vmsilo.errors import UserError
from vmsilo.host.paths import Paths

MIB = 1 << 20


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("balloon", help="memory balancing status")
    commands = parser.add_subparsers(dest="balloon_command", metavar="SUBCOMMAND", required=True)
    status = commands.add_parser(
        "status", help="per VM: balloon, guest and host memory, last decision"
    )
    status.add_argument("--json", action="store_true", help="print balloond's status as JSON")
    status.set_defaults(func=run_status)


def _mib(value: object) -> str:
    return f"{int(value) // MIB} MiB" if isinstance(value, int) else "-"


def load_status() -> dict[str, Any]:
    path = Paths.for_mode().run_dir / STATUS_FILE
    try:
        document: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(
            f"vmsilo-balloond is not running (no status at {path}); vmsilod "
            "starts it with the first VM that has a balloon"
        ) from None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read balloond's status {path}: {exc}") from None
    return document


def run_status(args: argparse.Namespace) -> int:
    document = load_status()
    if args.json:
        print(json.dumps(document, indent=2))
        return 0
    console = output_console()
    host = document.get("host", {})
    age = time.time() - float(document.get("updated", 0))
    stale = age > 3 * float(document.get("interval", 2.0)) + 5
    console.print(
        f"host: {_mib(host.get('available'))} available of {_mib(host.get('total'))} "
        f"(critical below {_mib(host.get('criticalAvailable'))}), memory pressure "
        f"{host.get('psiSomeAvg10', 0):.1f}%; tick every {document.get('interval', 0):.2f} s, "
        f"updated {age:.0f} s ago" + (" — balloond looks stopped" if stale else "")
    )
    table = Table(title="Balloons")
    for column in ("VM", "balloon", "target", "guest available", "floor", "stats", "last decision"):
        table.add_column(column)
    for name, row in document.get("vms", {}).items():
        table.add_row(
            name,
            _mib(row.get("actual")),
            _mib(row.get("target")),
            _mib(row.get("guestAvailable")),
            _mib(row.get("floor")),
            str(row.get("state", "-")),
            str(row.get("reason", "-")),
        )
    if table.row_count:
        console.print(table)
    else:
        console.print("No running VM has a balloon.")
    return 0
