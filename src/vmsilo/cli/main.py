"""``vmsilo``: the umbrella command. Each group of subcommands lives in its own module with a
``register(subparsers)`` function; this module only wires them together and turns user errors
into a message and exit status 1."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from vmsilo import __version__
from vmsilo.errors import UserError

# Subcommand group -> module. A group is listed only once it works.
GROUPS: dict[str, str] = {
    "config": "vmsilo.cli.config_cmd",
    "image": "vmsilo.cli.image_cmd",
    "daemon": "vmsilo.cli.daemon_cmd",
    "net": "vmsilo.cli.net_cmd",
    "balloon": "vmsilo.cli.balloon_cmd",
    "desktop": "vmsilo.cli.desktop_cmd",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmsilo", description="Manage vmsilo VMs: configuration, images, status."
    )
    parser.add_argument("--version", action="version", version=f"vmsilo {__version__}")
    sub = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)
    for module_name in GROUPS.values():
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
    except UserError as exc:
        print(f"vmsilo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
