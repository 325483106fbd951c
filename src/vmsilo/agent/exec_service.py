"""Port 5000 in the guest: one stream, one request.

The agent greets with ``AgentHello``, reads one request and serves it: an idle report, a
poweroff, or a command whose stdin/stdout/stderr are pumped between the stream and the
command's descriptors. Output is read from the command only as fast as the host takes it, and
stdin frames are read from the stream only as fast as the command takes them, so both
directions have backpressure. Anything malformed from the host ends the stream (the command
is hung up, as when the host disappears).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

from vmsilo import __version__
from vmsilo.agent.fdio import wait_readable, wait_writable
from vmsilo.agent.process import (
    Child,
    CommandError,
    hang_up,
    lookup_account,
    start_command,
    wait_for_exit,
)
from vmsilo.agent.state import AgentState
from vmsilo.channel.stream import ChannelError, Stream
from vmsilo.protocol.errors import ProtocolError
from vmsilo.protocol.exec import (
    MAX_CHUNK,
    PROTOCOL_VERSION,
    AgentHello,
    Direction,
    ErrorReply,
    ExecRequest,
    ExitStatus,
    IdleReport,
    Message,
    PoweroffAck,
    PoweroffRequest,
    Resize,
    SignalRequest,
    StatusRequest,
    Stderr,
    Stdin,
    StdinEof,
    Stdout,
    encode_message,
    read_message,
)

log = logging.getLogger(__name__)

# After the command exits, output still in its pipes is forwarded; a pipe that stays silent
# this long is held by a background grandchild, and we stop waiting for it.
DRAIN_IDLE_AFTER_EXIT = 0.5


@dataclass
class ExecConfig:
    default_user: str = "user"
    poweroff_command: Sequence[str] = ("systemctl", "poweroff")
    state: AgentState = field(default_factory=AgentState)
    background: set[asyncio.Task[None]] = field(default_factory=set)


async def send(stream: Stream, message: Message) -> None:
    await stream.write(encode_message(message))


async def serve_exec_stream(stream: Stream, config: ExecConfig) -> None:
    """Serve one stream on port 5000. Returns when done; the caller closes the stream."""
    state = config.state
    await send(stream, AgentHello(PROTOCOL_VERSION, __version__, state.boot_time))
    try:
        request = await read_message(stream, Direction.TO_GUEST)
    except ProtocolError as exc:
        log.warning("exec stream: bad request from the host: %s", exc)
        return
    except asyncio.IncompleteReadError:
        return  # the host only wanted the hello
    if isinstance(request, StatusRequest):
        await send(stream, IdleReport(state.running, state.last_ended, state.boot_time))
    elif isinstance(request, PoweroffRequest):
        await send(stream, PoweroffAck())
        await stream.write_eof()
        _start_poweroff(config)
    elif isinstance(request, ExecRequest):
        await _serve_command(stream, request, config)
    else:
        await send(stream, ErrorReply(f"expected a request, got {type(request).__name__}"))


def _start_poweroff(config: ExecConfig) -> None:
    log.info("poweroff requested: %s", shlex.join(config.poweroff_command))
    try:
        popen = subprocess.Popen(list(config.poweroff_command), start_new_session=True)
    except OSError as exc:
        log.error("cannot run the poweroff command: %s", exc)
        return

    async def reap() -> None:
        await wait_for_exit(popen)

    task = asyncio.create_task(reap())
    config.background.add(task)
    task.add_done_callback(config.background.discard)


async def _serve_command(stream: Stream, request: ExecRequest, config: ExecConfig) -> None:
    try:
        account = lookup_account(request.user or config.default_user)
        child = start_command(request, account)
    except CommandError as exc:
        await send(stream, ErrorReply(str(exc)))
        return
    except OSError as exc:
        # Report it as a shell would: a message on stderr and status 127 / 126.
        status = 127 if isinstance(exc, FileNotFoundError) else 126
        reason = exc.strerror or str(exc)
        # The program's name as given (bytes, perhaps not UTF-8; cut to fit one chunk), as a
        # shell would print it.
        await send(stream, Stderr(b"vmsilo-agent: " + request.argv[0][:4096]
                                  + f": {reason}\n".encode(errors="backslashreplace")))
        await send(stream, ExitStatus(code=status))
        return
    config.state.command_started()
    try:
        await CommandSession(stream, child).run()
    finally:
        config.state.command_ended()


class CommandSession:
    def __init__(self, stream: Stream, child: Child) -> None:
        self._stream = stream
        self._child = child
        self._exited_at: float | None = None
        self._host_gone = False

    async def run(self) -> None:
        child = self._child
        outputs = [asyncio.create_task(self._pump_output(child.stdout_fd, Stdout))]
        if child.stderr_fd is not None:
            outputs.append(asyncio.create_task(self._pump_output(child.stderr_fd, Stderr)))
        inputs = asyncio.create_task(self._pump_input())
        try:
            status = await child.wait()
            self._exited_at = asyncio.get_running_loop().time()
            await asyncio.gather(*outputs)
            if not self._host_gone:
                with contextlib.suppress(ChannelError):
                    await send(self._stream, status)
                    await self._stream.write_eof()
        finally:
            inputs.cancel()
            for task in outputs:
                task.cancel()
            await asyncio.gather(inputs, *outputs, return_exceptions=True)
            child.close_all()

    def _lost_host(self, why: str) -> None:
        if not self._host_gone:
            self._host_gone = True
            log.info("exec stream for pid %d lost: %s", self._child.pid, why)
            hang_up(self._child)

    async def _pump_output(self, fd: int | None, kind: type[Stdout] | type[Stderr]) -> None:
        loop = asyncio.get_running_loop()
        while fd is not None:
            try:
                data = os.read(fd, MAX_CHUNK)
            except BlockingIOError:
                if not await wait_readable(fd, DRAIN_IDLE_AFTER_EXIT):
                    exited_at = self._exited_at
                    if exited_at is not None and loop.time() - exited_at >= DRAIN_IDLE_AFTER_EXIT:
                        return
                continue
            except OSError as exc:
                if exc.errno == errno.EIO:  # PTY master once every slave is closed
                    return
                raise
            if not data:
                return
            if self._host_gone:
                continue  # nobody to send to; keep draining so the command is not blocked
            try:
                await send(self._stream, kind(data))
            except ChannelError as exc:
                self._lost_host(str(exc))

    async def _pump_input(self) -> None:
        try:
            while True:
                message = await read_message(self._stream, Direction.TO_GUEST)
                if isinstance(message, Stdin):
                    await self._write_stdin(message.data)
                elif isinstance(message, StdinEof):
                    self._child.close_stdin()
                elif isinstance(message, SignalRequest):
                    self._child.send_signal(message.signal)
                elif isinstance(message, Resize):
                    self._child.resize(message.rows, message.cols)
                else:
                    raise ProtocolError(f"unexpected {type(message).__name__} during a command")
        except asyncio.IncompleteReadError:
            self._child.close_stdin()  # the host half-closed: no more input, output goes on
        except ProtocolError as exc:
            log.warning("exec stream for pid %d: protocol violation: %s", self._child.pid, exc)
            self._lost_host(f"protocol violation: {exc}")
            with contextlib.suppress(ChannelError):
                await self._stream.close()
        except ChannelError as exc:
            self._lost_host(str(exc))

    async def _write_stdin(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            fd = self._child.stdin_fd
            if fd is None:
                return  # stdin already closed: drop, as a closed pipe would
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                await wait_writable(fd)
                continue
            except (BrokenPipeError, OSError):
                self._child.close_stdin()
                return
            view = view[written:]
