"""``vm-run <vm> <command…>``: run a command in a VM, starting the VM if it is stopped.

stdin, stdout and stderr are streamed; the exit status is the command's (128 + N when signal N
killed it). When stdin is a terminal, the command gets a terminal too (raw mode, window size,
resizes); otherwise Ctrl-C and the other usual signals are forwarded to the command. vm-run's
own failures (unknown VM, no daemon, a VM that does not start) exit with 255, as ssh does, so
that they cannot be mistaken for the command's status.

The command's arguments, ``--env`` values and ``--cwd`` reach the guest as the exact bytes
vm-run was given (Linux arguments need not be UTF-8). A command the agent would refuse (more
than ``MAX_ARGUMENTS`` bytes of arguments and environment, an oversized argument, ...) is refused
here, before vmsilod is contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence

from vmsilo.channel.exec_client import ExecSession
from vmsilo.channel.stream import ChannelError, SocketStream
from vmsilo.cli import client, terminal
from vmsilo.errors import UserError
from vmsilo.protocol import control
from vmsilo.protocol.errors import ProtocolError
from vmsilo.protocol.exec import EXEC_PORT, ExecRequest, encode_message

OWN_FAILURE = 255
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                     signal.SIGUSR1, signal.SIGUSR2)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vm-run", description="Run a command in a VM, starting the VM if needed.")
    parser.add_argument("-u", "--user", help="guest user to run as (default: user)")
    parser.add_argument("-C", "--cwd", help="working directory in the guest (default: home)")
    parser.add_argument("-e", "--env", action="append", default=[], metavar="NAME=VALUE",
                        help="set an environment variable for the command (repeatable)")
    tty_group = parser.add_mutually_exclusive_group()
    tty_group.add_argument("-t", "--tty", dest="tty", action="store_true", default=None,
                           help="give the command a terminal even if stdin is not one")
    tty_group.add_argument("-T", "--no-tty", dest="tty", action="store_false",
                           help="no terminal even if stdin is one")
    parser.add_argument("--no-start", action="store_true",
                        help="fail instead of starting a stopped VM")
    parser.add_argument("vm", help="the VM's name")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command and arguments")
    return parser


def parse_env(items: Sequence[str]) -> dict[bytes, bytes]:
    """``NAME=VALUE`` items (as ``sys.argv`` holds them) to environment entries in bytes."""
    env = {}
    for item in items:
        name, sep, value = os.fsencode(item).partition(b"=")
        if not sep or not name:
            raise UserError(f"--env {item!r}: write NAME=VALUE")
        env[name] = value
    return env


def build_request(args: argparse.Namespace, command: Sequence[str], use_tty: bool,
                  rows: int, cols: int) -> ExecRequest:
    """The request for the agent, checked as the agent will check it: raises ``UserError``
    (one line: which field, or the total size) for anything it would refuse."""
    env = parse_env(args.env)
    if use_tty:
        env.setdefault(b"TERM", os.environb.get(b"TERM", b"xterm-256color"))
    try:
        request = ExecRequest(argv=[os.fsencode(arg) for arg in command], env=env,
                              cwd=None if args.cwd is None else os.fsencode(args.cwd),
                              user=args.user, tty=use_tty, rows=rows, cols=cols)
        encode_message(request)
    except (ProtocolError, ValueError) as exc:
        raise UserError(f"cannot send this command to VM {args.vm}: {exc}") from None
    return request


async def run(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UserError("no command given; usage: vm-run <vm> <command> [args...]")
    use_tty = sys.stdin.isatty() if args.tty is None else args.tty
    rows, cols = terminal.window_size(0) if use_tty else (24, 80)
    # Both requests are checked before vmsilod is contacted: a refusal is one line, and
    # nothing was started for a command that could not have been sent.
    try:
        open_request = control.Request(op="open", vm=args.vm, port=EXEC_PORT,
                                       start=not args.no_start, timeout=60.0)
        control.encode_request(open_request)
    except ProtocolError as exc:
        raise UserError(f"{args.vm!r} is not a VM name ({exc})") from None
    request = build_request(args, command, use_tty, rows, cols)
    conn = await client.connect()
    try:
        await conn.request(open_request)
    except BaseException:
        await conn.close()
        raise
    stream = SocketStream(conn.reader, conn.writer)
    loop = asyncio.get_running_loop()
    try:
        session = await ExecSession.start(stream, request, args.vm)
    except (ChannelError, ProtocolError) as exc:
        await stream.close()
        raise UserError(f"VM {args.vm}: {exc}") from exc
    pending: set[asyncio.Future[None]] = set()

    def forward(signum: int) -> None:
        task = asyncio.ensure_future(session.send_signal(signum))
        pending.add(task)
        task.add_done_callback(pending.discard)

    def resize() -> None:
        r, c = terminal.window_size(0)
        task = asyncio.ensure_future(session.resize(r, c))
        pending.add(task)
        task.add_done_callback(pending.discard)

    for signum in FORWARDED_SIGNALS:
        loop.add_signal_handler(signum, forward, signum)
    if use_tty:
        loop.add_signal_handler(signal.SIGWINCH, resize)
    try:
        stdin = terminal.read_fd(0)
        out, err = terminal.fd_sink(1), terminal.fd_sink(2)
        if use_tty and sys.stdin.isatty():
            with terminal.raw_mode(0):
                status = await session.pump(stdin, out, err)
        else:
            status = await session.pump(stdin, out, err)
    except (ChannelError, ProtocolError) as exc:
        raise UserError(f"VM {args.vm}: the command's stream broke: {exc}") from exc
    finally:
        for signum in (*FORWARDED_SIGNALS, signal.SIGWINCH):
            loop.remove_signal_handler(signum)
        await session.close()
    return status.shell_status()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(run(args))
    except UserError as exc:
        print(f"vm-run: {exc}", file=sys.stderr)
        return OWN_FAILURE


if __name__ == "__main__":
    sys.exit(main())
