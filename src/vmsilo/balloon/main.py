"""``vmsilo-balloond``: balances memory between the host and running VMs (see
``vmsilo.balloon.daemon``). vmsilod starts it; it can also run by hand in the foreground.

``--host-meminfo`` reads the host's memory from another file than ``/proc/meminfo``: the
system tests use it to stand for a host short of memory, which this machine is not.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from vmsilo.balloon.daemon import Balloond
from vmsilo.balloon.interval import MEMINFO
from vmsilo.balloon.settings import BalloonSettings
from vmsilo.cli.options import add_config_option
from vmsilo.config import load_config
from vmsilo.errors import UserError
from vmsilo.host.paths import Paths

LEVELS = {"error": logging.ERROR, "warn": logging.WARNING, "info": logging.INFO,
          "debug": logging.DEBUG, "trace": logging.DEBUG}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmsilo-balloond", description=__doc__)
    add_config_option(parser)
    parser.add_argument(
        "--run-dir", type=Path, help="vmsilod's runtime directory (default: the mode's, see README)"
    )
    parser.add_argument(
        "--host-meminfo",
        type=Path,
        default=MEMINFO,
        help="read the host's memory from this file (default: %(default)s)",
    )
    return parser


async def _serve(daemon: Balloond) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await daemon.run(stop)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config).config
        settings = BalloonSettings.from_table(config.vmsilo_balloond)
    except UserError as exc:
        print(f"vmsilo-balloond: {exc}", file=sys.stderr)
        return 1
    logging.basicConfig(
        level=LEVELS.get(settings.log_level, logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    run_dir = args.run_dir or Paths.for_mode().run_dir
    daemon = Balloond(run_dir, settings, meminfo=args.host_meminfo)
    try:
        asyncio.run(_serve(daemon))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
