"""``vmsilo-agent``: command-line entry of the guest agent.

In the guest it takes no arguments: it serves the multiplexer if the virtio-serial port
device exists and vsock otherwise. The flags exist so tests can run the agent on the host
(on a unix socket, as the current user, with a harmless poweroff command).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shlex
import signal
from collections.abc import Sequence
from pathlib import Path

from vmsilo.agent.exec_service import ExecConfig
from vmsilo.agent.server import Agent
from vmsilo.channel.guest_ports import MUX_DEVICE, PORTS_DIR, uses_mux


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmsilo-agent", description=__doc__)
    parser.add_argument(
        "--mux-device",
        type=Path,
        default=MUX_DEVICE,
        help="virtio-serial port device of the multiplexer (default: %(default)s)",
    )
    parser.add_argument(
        "--mux-socket", type=Path, help="serve the multiplexer on this unix socket instead (tests)"
    )
    parser.add_argument(
        "--vsock", action="store_true", help="serve on AF_VSOCK even if the port device exists"
    )
    parser.add_argument(
        "--ports-dir",
        type=Path,
        default=PORTS_DIR,
        help="where guest services listen as <port>.sock (default: %(default)s)",
    )
    parser.add_argument(
        "--default-user", default="user", help="account commands run as unless the host names one"
    )
    parser.add_argument(
        "--poweroff-command",
        default="systemctl poweroff",
        help="command run on a poweroff request (default: %(default)s)",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    return parser


async def _serve(args: argparse.Namespace) -> None:
    config = ExecConfig(
        default_user=args.default_user, poweroff_command=shlex.split(args.poweroff_command)
    )
    agent = Agent(config, args.ports_dir)
    if args.mux_socket is not None:
        await agent.serve_mux_socket(args.mux_socket)
    elif not args.vsock and uses_mux(args.mux_device):
        await agent.serve_mux_device(args.mux_device)
    else:
        await agent.serve_vsock()


def _let_commands_have_default_signals() -> None:
    """Signals ignored when the agent starts stay ignored in every command it execs (only
    caught ones are reset by exec), and a shell cannot trap a signal ignored on entry: Ctrl-C
    would never reach a program. A parent that started the agent in the background (a
    non-interactive shell does that to SIGINT and SIGQUIT) must not decide this for the
    guest's programs."""
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_IGN:
            signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT
                          else signal.SIG_DFL)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _let_commands_have_default_signals()
    logging.basicConfig(
        level=args.log_level, format="vmsilo-agent %(levelname)s %(name)s: %(message)s"
    )
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        logging.getLogger("vmsilo.agent").error("cannot serve: %s", exc)
        return 1
    return 0
