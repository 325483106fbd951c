"""vmsilod's side of one helper's stream broker (wire format: ``vmsilo.protocol.broker``).

A ``StreamBroker`` belongs to one helper process of one VM and one guest port. It makes the
socket pair, hands the helper's end to the launcher (an inherited descriptor), and answers
requests one at a time: for the helper's own port it opens a guest stream through the
supervisor (``open_port(vm, port, start=False, timeout)``; a stopped VM is never started by a
helper), makes a fresh socket pair, sends one end with the reply and splices the other to the
guest stream. At most ``max_streams`` streams are open at once (``BUSY`` beyond). Anything
else on the broker — another port, a malformed record, a descriptor sent along — is a
violation: the helper is taken to be in a guest's hands. It is logged with the VM's name, the
broker is closed, the helper's open streams are ended, and ``on_violation`` is called (the
launcher stops the helper).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from vmsilo.channel.stream import ChannelError
from vmsilo.daemon.server import splice_stream
from vmsilo.errors import UserError
from vmsilo.protocol import broker as wire

log = logging.getLogger(__name__)

# (vm, port, start, timeout in seconds) -> a guest stream; Supervisor.open_port
OpenPort = Callable[[str, int, bool, float | None], Awaitable[Any]]

OPEN_TIMEOUT = 5.0  # seconds for one guest stream to open


class StreamBroker:
    def __init__(self, vm: str, helper: str, port: int, open_port: OpenPort,
                 max_streams: int, open_timeout: float = OPEN_TIMEOUT,
                 on_violation: Callable[[], None] | None = None) -> None:
        self.vm = vm
        self.helper = helper  # for messages: "D-Bus proxy", "Wayland"
        self.port = port
        self.open_port = open_port
        self.max_streams = max_streams
        self.open_timeout = open_timeout
        self.violation: str | None = None
        self.on_violation = on_violation
        self._ours, theirs = socket.socketpair(socket.AF_UNIX,
                                               socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self._ours.setblocking(False)
        self._theirs: socket.socket | None = theirs
        self._serving: asyncio.Task[None] | None = None
        self._streams: set[asyncio.Task[None]] = set()

    @property
    def helper_fd(self) -> int:
        """The helper's end, to pass to its process (``pass_fds``); ``release`` it after."""
        assert self._theirs is not None, "the helper's end was already released"
        return self._theirs.fileno()

    def release(self) -> None:
        """The helper process has its copy: vmsilod's copy of that end goes."""
        if self._theirs is not None:
            self._theirs.close()
            self._theirs = None

    @property
    def streams(self) -> int:
        return len(self._streams)

    def start(self) -> None:
        self._serving = asyncio.create_task(self.serve())
        self._serving.add_done_callback(self._served)

    def _served(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("VM %s: the %s broker failed", self.vm, self.helper,
                      exc_info=task.exception())

    def close(self) -> None:
        """No more streams: the helper sees its broker end. Open streams are ended too."""
        if self._serving is not None:
            self._serving.cancel()
        for task in list(self._streams):
            task.cancel()
        self.release()
        self._ours.close()

    async def serve(self) -> None:
        try:
            while True:
                try:
                    record, fds, flags = await wire.receive(self._ours, 1)
                except (ConnectionError, OSError):
                    return
                if not record and not fds:
                    return  # the helper ended
                try:
                    port = wire.decode_request(record, fds, flags)
                    if port != self.port:
                        raise wire.BrokerViolationError(f"asked for port {port}; it may only open "
                                                   f"port {self.port}")
                except wire.BrokerViolationError as exc:
                    self.violation = str(exc)
                    log.warning("VM %s: the %s helper broke its broker's rules (%s); it is "
                                "cut off", self.vm, self.helper, exc)
                    for task in list(self._streams):
                        task.cancel()
                    if self.on_violation is not None:
                        self.on_violation()
                    return
                finally:
                    wire.close_fds(fds)
                await self._answer()
        finally:
            self._ours.close()

    async def _answer(self) -> None:
        if len(self._streams) >= self.max_streams:
            await wire.send(self._ours, wire.encode_reply(
                wire.Reply.BUSY, f"{self.max_streams} streams are open"))
            return
        try:
            stream = await self.open_port(self.vm, self.port, False, self.open_timeout)
        except (UserError, ChannelError, TimeoutError, OSError) as exc:
            await wire.send(self._ours, wire.encode_reply(wire.Reply.RETRY, str(exc)))
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX,
                                         socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            await wire.send(self._ours, wire.encode_reply(wire.Reply.OK), [theirs.fileno()])
        except BaseException:
            ours.close()
            await stream.close()
            raise
        finally:
            theirs.close()
        task = asyncio.create_task(self._splice(ours, stream))
        self._streams.add(task)
        task.add_done_callback(self._streams.discard)

    async def _splice(self, sock: socket.socket, stream: Any) -> None:
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        try:
            await splice_stream(reader, writer, stream)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
