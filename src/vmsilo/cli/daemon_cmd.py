"""``vmsilo daemon``, ``vmsilo status`` and ``vmsilo reload``: the daemon and its state."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from rich.table import Table

from vmsilo.cli import client
from vmsilo.cli.options import add_config_option
from vmsilo.cli.output import output_console
from vmsilo.protocol import control


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"


def status_table(vms: list[dict[str, Any]]) -> Table:
    table = Table("VM", "state", "uptime", "CID", "memory", "pid", "reason")
    for vm in vms:
        state = str(vm["state"]) + (" (config change pending)" if vm.get("pending") else "")
        reason = "-"
        if vm.get("reason"):
            reason = str(vm["reason"]) + (f"\nsee {vm['log']}" if vm.get("log") else "")
        table.add_row(str(vm["name"]), state, _duration(vm.get("uptime")), str(vm["cid"]),
                      f"{vm['memory']} MB", str(vm["pid"] or "-"), reason)
    return table


def cmd_status(args: argparse.Namespace) -> int:
    reply = asyncio.run(client.call(control.Request(op="status")))
    vms = reply.get("vms", [])
    if args.json:
        print(json.dumps(vms, indent=2))
    else:
        output_console().print(status_table(vms))
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    reply = asyncio.run(client.call(control.Request(op="reload")))
    pending = reply.get("pending", [])
    if pending:
        print("config reloaded; running VMs keep their old config until they restart: "
              + ", ".join(pending))
    else:
        print("config reloaded")
    return 0


def cmd_daemon(args: argparse.Namespace) -> int:
    from vmsilo.daemon import main as daemon_main  # the daemon's imports only when needed

    return daemon_main.run(args.config)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = sub.add_parser("status", help="show every VM's state")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.set_defaults(func=cmd_status)
    reload = sub.add_parser("reload", help="make vmsilod re-read its config")
    reload.set_defaults(func=cmd_reload)
    daemon = sub.add_parser("daemon", help="run vmsilod in the foreground")
    add_config_option(daemon)
    daemon.set_defaults(func=cmd_daemon)
