"""``vm-stop <vm> | --all``: stop VMs (the guest is asked to power off first)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from vmsilo.cli import client
from vmsilo.errors import UserError
from vmsilo.protocol import control


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vm-stop", description="Stop a VM, or all VMs.")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("vm", nargs="?", help="the VM's name")
    target.add_argument("--all", action="store_true", help="stop every running VM")
    args = parser.parse_args(argv)
    request = control.Request(op="stop", all=True) if args.all else control.Request(
        op="stop", vm=args.vm)
    try:
        reply = asyncio.run(client.call(request))
    except UserError as exc:
        print(f"vm-stop: {exc}", file=sys.stderr)
        return 1
    if args.all:
        for line in reply.get("stopped", []) or ["no VM was running"]:
            print(line)
    else:
        print(f"{args.vm}: {reply.get('how', 'stopped')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
