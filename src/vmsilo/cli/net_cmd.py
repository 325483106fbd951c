"""``vmsilo net show``: per VM, what the host builds for its network (from the config) next to
what exists right now (asked of the kernel): TAP devices with their state, bridge and
addresses, the guest's addresses, bridges and their ports, and nftables tables with their
rule counts (``--rules`` prints the rules). Reading rules needs root; devices do not.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.table import Table

from vmsilo.cli.options import add_config_option
from vmsilo.cli.output import output_console
from vmsilo.config import load_config, resolve
from vmsilo.config.resolved import Resolved
from vmsilo.errors import UserError
from vmsilo.network.inspect import NetworkState, observe
from vmsilo.network.plan import NetworkPlan, plan_all, plan_vm


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("net", help="show the VMs' host networking")
    commands = parser.add_subparsers(dest="net_command", metavar="SUBCOMMAND", required=True)
    show = commands.add_parser(
        "show", help="devices, addresses, bridges and rules per VM, planned and present"
    )
    add_config_option(show)
    show.add_argument("vm", nargs="?", help="only this VM")
    show.add_argument("--rules", action="store_true", help="print each table's rules")
    show.add_argument("--json", action="store_true", help="print JSON instead of tables")
    show.set_defaults(func=run_show)


def _plan(resolved: Resolved, vm: str | None) -> NetworkPlan:
    if vm is None:
        return plan_all(resolved)
    return plan_vm(resolved, vm)  # a UserError names the known VMs


def _document(resolved: Resolved, plan: NetworkPlan, state: NetworkState) -> dict[str, Any]:
    vms: dict[str, Any] = {}
    for tap in plan.taps:
        interface = resolved.vms[tap.vm].interfaces[tap.interface]
        live = state.taps[tap.name]
        vms.setdefault(tap.vm, {"interfaces": {}, "tables": []})["interfaces"][tap.interface] = {
            "tap": tap.name,
            "state": live.state,
            "hostAddress": tap.host_address,
            "bridge": tap.bridge,
            "bridgeNow": live.master,
            "hostAddressesNow": list(live.addresses),
            "guestMac": tap.guest_mac,
            "guestAddresses": [*interface.addresses, *interface.v6_addresses],
            "dhcp": interface.dhcp,
        }
    for table in plan.tables:
        vm = table.name.removeprefix("vmsilo-")
        live_table = state.tables[table.key()]
        vms.setdefault(vm, {"interfaces": {}, "tables": []})["tables"].append(
            {"family": table.family, "name": table.name, "rules": live_table.rules,
             "plannedRules": sum(1 for item in table.body if "rule" in item)}
        )
    return {
        "vms": vms,
        "bridges": {
            name: {"present": b.present, "ports": list(b.ports)}
            for name, b in state.bridges.items()
        },
        "rulesReadable": state.rules_readable,
    }


def run_show(args: argparse.Namespace) -> int:
    config_path: Path | None = args.config
    resolved = resolve(load_config(config_path).config)
    if args.vm is not None and args.vm not in resolved.vms:
        known = ", ".join(sorted(resolved.vms)) or "none"
        raise UserError(f"VM {args.vm!r} is not in the config (VMs: {known}); check the name")
    plan = _plan(resolved, args.vm)
    state = observe(plan, with_text=args.rules)
    document = _document(resolved, plan, state)
    if args.json:
        print(json.dumps(document, indent=2))
        return 0
    console = output_console()
    if not plan.taps:
        console.print("No network interfaces: " + (f"VM {args.vm} is" if args.vm else
                                                   "every VM is") + " offline.")
        return 0
    devices = Table(title="Devices")
    for column in ("VM", "interface", "TAP", "state", "host side", "guest addresses"):
        devices.add_column(column)
    for tap in plan.taps:
        row = document["vms"][tap.vm]["interfaces"][tap.interface]
        host_side = ", ".join(row["hostAddressesNow"]) if row["hostAddressesNow"] else (
            f"bridge {row['bridgeNow']}" if row["bridgeNow"] else "-")
        guest = " ".join(row["guestAddresses"]) or ("dhcp" if row["dhcp"] else "-")
        devices.add_row(tap.vm, tap.interface, tap.name, row["state"], host_side, guest)
    console.print(devices)
    if state.bridges:
        bridges = Table(title="Bridges")
        for column in ("bridge", "present", "ports"):
            bridges.add_column(column)
        for name, bridge in state.bridges.items():
            bridges.add_row(name, "yes" if bridge.present else "no",
                            " ".join(bridge.ports) or "-")
        console.print(bridges)
    rules = Table(title="nftables")
    for column in ("VM", "table", "rules"):
        rules.add_column(column)
    for vm, entry in document["vms"].items():
        for table in entry["tables"]:
            count = table["rules"]
            shown = (str(count) if count is not None
                     else "absent" if state.rules_readable else "? (needs root)")
            rules.add_row(vm, f"{table['family']} {table['name']}", shown)
    if rules.row_count:
        console.print(rules)
    if args.rules:
        for table_state in state.tables.values():
            if table_state.text:
                console.print(table_state.text, markup=False, highlight=False)
    return 0
