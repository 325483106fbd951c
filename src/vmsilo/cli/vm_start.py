"""``vm-start <vm>``: start a VM (and the VMs it depends on) and wait until it runs."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from vmsilo.cli import client
from vmsilo.errors import UserError
from vmsilo.protocol import control


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vm-start", description="Start a VM.")
    parser.add_argument("vm", help="the VM's name")
    args = parser.parse_args(argv)
    try:
        asyncio.run(client.call(control.Request(op="start", vm=args.vm)))
    except UserError as exc:
        print(f"vm-start: {exc}", file=sys.stderr)
        return 1
    print(f"{args.vm}: running")
    return 0


if __name__ == "__main__":
    sys.exit(main())
