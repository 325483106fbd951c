"""Host side of the exec protocol (guest port 5000).

``ExecClient`` opens a stream per operation: ``hello`` (is the agent up, and since when),
``status`` (the idle report autoShutdown uses), ``poweroff``, and commands, either all at once
with ``run`` or step by step with an ``ExecSession`` (stdin, signals, resizes, output events).
Output is consumed through awaited sinks, so a slow consumer slows the guest command down
instead of filling memory. Whatever the guest sends is validated by ``vmsilo.protocol.exec``;
a violation is logged with the VM's name, ends that stream and raises ``ProtocolError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping, Sequence
from types import TracebackType

from vmsilo.channel.stream import ChannelError, Stream
from vmsilo.channel.transports import Transport
from vmsilo.protocol.errors import ProtocolError
from vmsilo.protocol.exec import (
    EXEC_PORT,
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
from vmsilo.protocol.text import clean_display_text

log = logging.getLogger(__name__)

MAX_ERROR_TEXT = 1024  # characters of a guest's ErrorReply shown

Sink = Callable[[bytes], Awaitable[None]]
StdinSource = bytes | AsyncIterable[bytes] | None


class ExecError(ChannelError):
    """The agent declined the request (for example: no such user in the guest)."""


async def _discard(_: bytes) -> None:
    return None


async def _receive(stream: Stream, vm_name: str) -> Message:
    try:
        return await read_message(stream, Direction.TO_HOST)
    except ProtocolError as exc:
        log.warning("vm %s: exec stream closed: protocol violation: %s", vm_name, exc)
        await stream.close()
        raise
    except asyncio.IncompleteReadError as exc:
        raise ChannelError(f"vm {vm_name}: the agent ended the exec stream early") from exc


async def hello(stream: Stream, vm_name: str = "?") -> AgentHello:
    """Read the agent's greeting, which starts every exec stream."""
    message = await _receive(stream, vm_name)
    if not isinstance(message, AgentHello):
        await stream.close()
        raise ProtocolError(
            f"vm {vm_name}: expected the agent's hello, got {type(message).__name__}"
        )
    if message.protocol != PROTOCOL_VERSION:
        await stream.close()
        raise ProtocolError(
            f"vm {vm_name}: agent speaks exec protocol {message.protocol}, "
            f"this host speaks {PROTOCOL_VERSION}; rebuild the guest image"
        )
    return message


class ExecSession:
    """One running command. Use as an async context manager, or call ``close``."""

    def __init__(self, stream: Stream, agent: AgentHello, vm_name: str) -> None:
        self.stream = stream
        self.agent = agent
        self.vm_name = vm_name
        self.exit_status: ExitStatus | None = None

    @classmethod
    async def start(cls, stream: Stream, request: ExecRequest, vm_name: str = "?") -> ExecSession:
        agent = await hello(stream, vm_name)
        await stream.write(encode_message(request))
        return cls(stream, agent, vm_name)

    async def send_stdin(self, data: bytes) -> None:
        view = memoryview(data)
        for offset in range(0, len(view), MAX_CHUNK):
            await self.stream.write(encode_message(Stdin(bytes(view[offset : offset + MAX_CHUNK]))))

    async def close_stdin(self) -> None:
        await self.stream.write(encode_message(StdinEof()))

    async def send_signal(self, signum: int) -> None:
        await self.stream.write(encode_message(SignalRequest(signum)))

    async def resize(self, rows: int, cols: int) -> None:
        await self.stream.write(encode_message(Resize(rows, cols)))

    async def next_event(self) -> Stdout | Stderr | ExitStatus:
        """The next chunk of output, or the exit status (after which nothing follows)."""
        if self.exit_status is not None:
            return self.exit_status
        message = await _receive(self.stream, self.vm_name)
        if isinstance(message, Stdout | Stderr):
            return message
        if isinstance(message, ExitStatus):
            self.exit_status = message
            return message
        await self.stream.close()
        if isinstance(message, ErrorReply):
            # The guest's words reach the user's terminal and logs: one visible line.
            reason = clean_display_text(message.message, max_len=MAX_ERROR_TEXT)
            raise ExecError(f"vm {self.vm_name}: {reason}")
        log.warning("vm %s: unexpected %s on an exec stream", self.vm_name, type(message).__name__)
        raise ProtocolError(f"vm {self.vm_name}: unexpected {type(message).__name__}")

    async def pump(
        self, stdin: StdinSource = None, stdout: Sink = _discard, stderr: Sink = _discard
    ) -> ExitStatus:
        """Feed ``stdin`` and deliver output until the command ends; return its status."""
        feeder = asyncio.create_task(self._feed(stdin))
        try:
            while True:
                event = await self.next_event()
                if isinstance(event, ExitStatus):
                    return event
                await (stdout if isinstance(event, Stdout) else stderr)(event.data)
        finally:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError, ChannelError):
                await feeder

    async def _feed(self, stdin: StdinSource) -> None:
        if isinstance(stdin, bytes):
            await self.send_stdin(stdin)
        elif stdin is not None:
            async for chunk in stdin:
                if chunk:
                    await self.send_stdin(chunk)
        await self.close_stdin()

    async def close(self) -> None:
        await self.stream.close()

    async def __aenter__(self) -> ExecSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class ExecClient:
    """Exec operations on one VM, each over its own stream to port 5000."""

    def __init__(self, transport: Transport, vm_name: str, open_timeout: float = 30.0) -> None:
        self.transport = transport
        self.vm_name = vm_name
        self.open_timeout = open_timeout

    async def _open(self) -> Stream:
        return await self.transport.open_stream(EXEC_PORT, self.open_timeout)

    async def hello(self) -> AgentHello:
        stream = await self._open()
        try:
            return await hello(stream, self.vm_name)
        finally:
            await stream.close()

    async def _request(self, request: StatusRequest | PoweroffRequest) -> Message:
        stream = await self._open()
        try:
            await hello(stream, self.vm_name)
            await stream.write(encode_message(request))
            return await _receive(stream, self.vm_name)
        finally:
            await stream.close()

    async def status(self) -> IdleReport:
        reply = await self._request(StatusRequest())
        if not isinstance(reply, IdleReport):
            raise ProtocolError(f"vm {self.vm_name}: expected an idle report")
        return reply

    async def poweroff(self) -> None:
        reply = await self._request(PoweroffRequest())
        if not isinstance(reply, PoweroffAck):
            raise ProtocolError(f"vm {self.vm_name}: expected a poweroff acknowledgement")

    async def start(self, request: ExecRequest) -> ExecSession:
        stream = await self._open()
        try:
            return await ExecSession.start(stream, request, self.vm_name)
        except BaseException:
            await stream.close()
            raise

    async def run(
        self,
        request: ExecRequest,
        *,
        stdin: StdinSource = None,
        stdout: Sink = _discard,
        stderr: Sink = _discard,
    ) -> ExitStatus:
        async with await self.start(request) as session:
            return await session.pump(stdin, stdout, stderr)


async def run_command(
    transport: Transport,
    argv: Sequence[str | bytes],
    *,
    vm_name: str = "?",
    env: Mapping[str | bytes, str | bytes] | None = None,
    cwd: str | bytes | None = None,
    user: str | None = None,
    stdin: StdinSource = None,
    stdout: Sink = _discard,
    stderr: Sink = _discard,
) -> ExitStatus:
    """Run ``argv`` in the guest and return how it ended. ``argv``, ``env`` and ``cwd`` may be
    bytes (sent as they are) or str (sent as ``os.fsencode`` gives them)."""
    request = ExecRequest(argv=[os.fsencode(a) for a in argv],
                          env={os.fsencode(k): os.fsencode(v) for k, v in (env or {}).items()},
                          cwd=None if cwd is None else os.fsencode(cwd), user=user)
    return await ExecClient(transport, vm_name).run(
        request, stdin=stdin, stdout=stdout, stderr=stderr
    )
