"""``vmsilo config check`` and ``vmsilo config show``: validate the config, print it resolved.

Both find the file as ``vmsilo.config.load_config`` does (``--config``, ``$VMSILO_CONFIG``,
``/etc/vmsilo/vmsilo.toml``, else the embedded default, announced on stderr). An invalid config
prints every problem on stderr and exits with status 1; nothing else happens.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.table import Table

from vmsilo.cli.options import add_config_option
from vmsilo.cli.output import output_console
from vmsilo.config import DEFAULT_CONFIG_PATH, ConfigError, LoadedConfig, load_config, resolve
from vmsilo.config.resolved import Resolved


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("config", help="check or show the configuration")
    commands = parser.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)

    check = commands.add_parser("check", help="validate the config file and report every problem")
    add_config_option(check)
    check.set_defaults(func=run_check)

    show = commands.add_parser("show", help="print the resolved config with derived values")
    add_config_option(show)
    show.add_argument("--json", action="store_true", help="print JSON instead of tables")
    show.set_defaults(func=run_show)


def _load(path: Path | None) -> LoadedConfig | None:
    """The loaded config, or None after printing every problem."""
    try:
        loaded = load_config(path)
    except ConfigError as exc:
        where = exc.source or "the configuration"
        count = len(exc.problems)
        print(f"vmsilo: {where}: {count} problem{'s' if count != 1 else ''}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None
    if loaded.is_default:
        print(
            f"vmsilo: no config file at {DEFAULT_CONFIG_PATH}; using the embedded default "
            "(one offline VM 'demo')",
            file=sys.stderr,
        )
    return loaded


def run_check(args: argparse.Namespace) -> int:
    loaded = _load(args.config)
    if loaded is None:
        return 1
    config = loaded.config
    if not config.enable:
        print(
            "vmsilo: warning: enable = false, so vmsilod manages no VM; set enable = true",
            file=sys.stderr,
        )
    where = loaded.source or "embedded default"
    count = len(config.vms)
    print(f"{where}: valid, {count} VM{'s' if count != 1 else ''}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    loaded = _load(args.config)
    if loaded is None:
        return 1
    resolved = resolve(loaded.config)
    if args.json:
        print(resolved.to_json())
    else:
        _print_tables(resolved)
    return 0


def _network_summary(resolved: Resolved, name: str) -> str:
    network = resolved.vms[name].vm.network
    parts = []
    if network.is_netvm:
        parts.append("netvm")
    if network.netvm:
        parts.append(f"via {network.netvm}")
    if not resolved.vms[name].interfaces:
        parts.append("offline")
    return ", ".join(parts) or "own interfaces"


def _print_tables(resolved: Resolved) -> None:
    # Piped output has no terminal width; keep rows whole instead of folding at 80 columns.
    console = output_console()
    vms = Table(title="VMs")
    for column in ("VM", "id/CID", "hypervisor", "memory", "CPUs", "colour", "network"):
        vms.add_column(column)
    for name, vm in resolved.vms.items():
        vms.add_row(
            name,
            str(vm.id),
            vm.vm.hypervisor,
            f"{vm.vm.memory} MB",
            str(vm.vm.cpus),
            vm.vm.color,
            _network_summary(resolved, name),
        )
    console.print(vms)
    interfaces = Table(title="Network interfaces")
    for column in ("VM", "interface", "PCI", "TAP", "MAC", "addresses", "host side"):
        interfaces.add_column(column)
    for name, vm in resolved.vms.items():
        for if_name, interface in vm.interfaces.items():
            host_side = interface.host_address or (
                f"bridge {interface.bridge}" if interface.bridge else "-"
            )
            interfaces.add_row(
                name,
                if_name,
                interface.pci_address,
                interface.tap_name,
                interface.mac,
                " ".join([*interface.addresses, *interface.v6_addresses])
                or ("dhcp" if interface.dhcp else "-"),
                host_side,
            )
    if interfaces.row_count:
        console.print(interfaces)
    else:
        console.print("No network interfaces: every VM is offline.")
