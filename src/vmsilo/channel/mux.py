"""Many streams over one byte pipe (the virtio-serial port), with per-stream flow control.

``MuxConnection`` runs one side of the multiplexer; host and guest use the same class with
different roles. Both start by sending HELLO and skip anything before the peer's HELLO, so
either side may restart and the other resynchronises; a HELLO arriving on an established
connection means the peer restarted, and every stream is reset. Streams opened by the host
have odd ids, by the guest even ones, always increasing.

Flow control is credit-based: each receiver announces a window, the sender never has more
than that many unacknowledged bytes in flight, and the receiver returns credit as its consumer
reads. So the reader loop never waits on a consumer: a stalled stream only stops its own
sender, and each stream's buffer is bounded by its window. A frame that breaks the rules for
one stream (data beyond credit, unknown stream, bad payload) resets that stream only; broken
framing tears down the connection. Both are logged with the peer's (VM's) name; per-stream
violations through a ``WarningLimiter``, so a peer sending garbage cannot flood the log.

Control replies (RESET, REFUSE, HELLO, ACCEPT, CREDIT, EOF) are written without waiting, since
the reader loop must never block; what they may leave queued toward a peer that does not read
is capped (``MAX_QUEUED_CONTROL`` beyond what flow-controlled data accounts for). Past the cap
the connection is dropped and the queue freed: a peer that sends cheap frames and never reads
the answers costs a bounded amount of memory.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable

from vmsilo.channel.stream import ChannelError, StreamRefusedError, StreamResetError
from vmsilo.protocol import mux as wire
from vmsilo.protocol.errors import MuxConnectionError, ProtocolError
from vmsilo.protocol.mux import FrameType, Role

log = logging.getLogger(__name__)

READ_SIZE = 256 * 1024
# Bytes of control replies that may wait in the write buffer toward a peer that is not reading,
# on top of what data writers account for (see ``MuxConnection._queue_limit``): about 35,000
# RESETs. An honest peer reads continuously, so its queue stays near empty.
MAX_QUEUED_CONTROL = 1024 * 1024
# The largest frame a data writer puts in the buffer before it waits for the buffer to drain.
_MAX_DATA_FRAME = wire.HEADER_SIZE + wire.MAX_DATA

StreamHandler = Callable[["MuxStream"], Awaitable[None]]
# Called with the port of an incoming stream; returns its handler or raises StreamRefusedError.
Acceptor = Callable[[int], Awaitable[StreamHandler]]


class WarningLimiter:
    """Log at most ``burst`` messages per ``period`` seconds for one peer; count the rest.

    The first message allowed after some were dropped says how many; ``flush`` (at the end of
    the connection) says so for any still unreported. ``clock`` is a monotonic clock in seconds,
    injectable for tests.
    """

    def __init__(self, logger: logging.Logger, peer_name: str, *, burst: int = 10,
                 period: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._log = logger
        self._peer_name = peer_name
        self._burst = burst
        self._period = period
        self._clock = clock
        self._window_start = clock()
        self._in_window = 0
        self.suppressed = 0

    def log(self, level: int, message: str, *args: object) -> None:
        """Log ``"<peer>: " + message % args`` at ``level``, unless over the budget."""
        now = self._clock()
        if now - self._window_start >= self._period:
            self._window_start, self._in_window = now, 0
        if self._in_window >= self._burst:
            self.suppressed += 1
            return
        self._in_window += 1
        self.flush()
        self._log.log(level, "%s: " + message, self._peer_name, *args)

    def flush(self) -> None:
        if self.suppressed:
            self._log.warning("%s: %d similar messages suppressed (at most %d per %g s)",
                              self._peer_name, self.suppressed, self._burst, self._period)
            self.suppressed = 0


class MuxStream:
    """One stream of a ``MuxConnection``; implements ``vmsilo.channel.stream.Stream``."""

    def __init__(
        self, conn: MuxConnection, stream_id: int, port: int, recv_window: int, send_credit: int
    ) -> None:
        self._conn = conn
        self.stream_id = stream_id
        self.port = port
        self._recv_window = recv_window
        self._recv_allowed = recv_window
        self._unacked = 0
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._readable = asyncio.Event()
        self._send_credit = send_credit
        self._writable = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._local_eof = False
        self._remote_eof = False
        self._reset_reason: str | None = None
        self.accepted: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # --- reading ---

    async def read(self, n: int = -1) -> bytes:
        while not self._chunks:
            if self._reset_reason is not None:
                raise StreamResetError(self._reset_reason)
            if self._remote_eof:
                return b""
            self._readable.clear()
            await self._readable.wait()
        chunk = self._chunks[0]
        if 0 < n < len(chunk):
            self._chunks[0] = chunk[n:]
            chunk = chunk[:n]
        else:
            self._chunks.popleft()
        self._consumed(len(chunk))
        return chunk

    async def readexactly(self, n: int) -> bytes:
        if self._chunks and len(self._chunks[0]) >= n:
            return await self.read(n)
        parts: list[bytes] = []
        missing = n
        while missing:
            chunk = await self.read(missing)
            if not chunk:
                raise asyncio.IncompleteReadError(b"".join(parts), n)
            parts.append(chunk)
            missing -= len(chunk)
        return b"".join(parts)

    def _consumed(self, count: int) -> None:
        self._buffered -= count
        self._unacked += count
        # Return credit in large steps: fewer frames, and the sender never starves because
        # the threshold is below the window.
        if self._unacked >= self._recv_window // 4 and self._reset_reason is None:
            self._recv_allowed += self._unacked
            self._conn._send_control(wire.encode_credit(self.stream_id, self._unacked))
            self._unacked = 0

    # --- writing ---

    async def write(self, data: bytes) -> None:
        async with self._write_lock:
            view = memoryview(data)
            while view:
                while self._send_credit <= 0:
                    self._check_writable()
                    self._writable.clear()
                    await self._writable.wait()
                self._check_writable()
                size = min(len(view), self._send_credit, wire.MAX_DATA)
                chunk = data if size == len(data) else bytes(view[:size])
                self._send_credit -= size
                self._conn._send(wire.encode_frame(FrameType.DATA, self.stream_id, chunk))
                view = view[size:]
                await self._conn._drain()

    def _check_writable(self) -> None:
        if self._reset_reason is not None:
            raise StreamResetError(self._reset_reason)
        if self._local_eof:
            raise ChannelError("write after write_eof")

    async def write_eof(self) -> None:
        async with self._write_lock:
            if self._local_eof or self._reset_reason is not None:
                return
            self._local_eof = True
            self._conn._send_control(wire.encode_frame(FrameType.EOF, self.stream_id))
            self._forget_if_done()

    async def close(self) -> None:
        """End the stream. If either direction is still open, the peer gets a RESET."""
        if self._reset_reason is None and not (self._local_eof and self._remote_eof):
            self.abort("closed")
        self._conn._forget(self)

    def abort(self, reason: str) -> None:
        if self._reset_reason is not None:
            return
        self._on_reset(reason)
        self._conn._send_control(wire.encode_reason(FrameType.RESET, self.stream_id, reason))

    # --- events from the connection's reader ---

    def _on_data(self, untrusted_data: bytes) -> None:
        if self._remote_eof:
            raise ProtocolError("DATA after EOF")
        if len(untrusted_data) > self._recv_allowed:
            raise ProtocolError(
                f"DATA of {len(untrusted_data)} bytes beyond the credit {self._recv_allowed}"
            )
        self._recv_allowed -= len(untrusted_data)
        self._chunks.append(untrusted_data)
        self._buffered += len(untrusted_data)
        self._readable.set()

    def _on_credit(self, increment: int) -> None:
        if self._send_credit + increment > wire.MAX_WINDOW:
            raise ProtocolError("CREDIT beyond the largest window")
        self._send_credit += increment
        self._writable.set()

    def _on_eof(self) -> None:
        if self._remote_eof:
            raise ProtocolError("second EOF")
        self._remote_eof = True
        self._readable.set()
        self._forget_if_done()

    def _on_reset(self, reason: str) -> None:
        if self._reset_reason is None:
            self._reset_reason = reason
        self._readable.set()
        self._writable.set()
        if not self.accepted.done():
            self.accepted.set_exception(StreamResetError(reason))
            self.accepted.exception()  # retrieved: nobody may be waiting any more

    def _forget_if_done(self) -> None:
        if self._local_eof and self._remote_eof:
            self._conn._forget(self)

    @property
    def is_reset(self) -> bool:
        return self._reset_reason is not None


class MuxConnection:
    """One side of the multiplexer over a reader/writer pair. ``run`` reads until the
    connection ends; ``open_stream`` opens a stream to a port on the other side."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        role: Role,
        peer_name: str,
        acceptor: Acceptor | None = None,
        window: int = wire.DEFAULT_WINDOW,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.role = role
        self.peer_name = peer_name
        self._acceptor = acceptor
        self._window = window
        self._streams: dict[int, MuxStream] = {}
        # The host opens odd ids (1, 3, ...), the guest even ones (2, 4, ...).
        self._parity = 1 if role is Role.HOST else 0
        self._last_local_id = -1 if role is Role.HOST else 0
        self._last_peer_id = 0 if role is Role.HOST else -1
        self._decoder = wire.MuxDecoder()
        self.established = asyncio.Event()
        self._session = secrets.randbits(64)  # this connection instance, named in our HELLOs
        self._peer_session: int | None = None
        self.closed = asyncio.Event()
        self.close_reason = ""
        self._handler_tasks: set[asyncio.Task[None]] = set()
        self._violations = WarningLimiter(log, peer_name)

    # --- public ---

    async def run(self) -> None:
        """Send HELLO, then read and dispatch frames until the connection ends."""
        try:
            self._send(wire.encode_hello(self.role, reply=False, session=self._session))
            while True:
                data = await self._reader.read(READ_SIZE)
                if not data:
                    self._teardown("connection closed by peer")
                    return
                self._decoder.feed(data)
                self._dispatch_buffered()
        except MuxConnectionError as exc:
            log.warning("%s: mux connection torn down: %s", self.peer_name, exc)
            self._teardown(f"protocol violation: {exc}")
        except (ConnectionError, OSError, StreamResetError) as exc:
            self._teardown(f"connection lost: {exc}")
        finally:
            self._teardown("connection ended")

    async def open_stream(self, port: int, timeout: float | None = None) -> MuxStream:
        if self.closed.is_set():
            raise StreamResetError(f"mux connection to {self.peer_name} is closed")
        if not self.established.is_set():
            raise ChannelError(f"mux connection to {self.peer_name} has no handshake yet")
        stream_id = self._last_local_id + 2
        if stream_id > wire.MAX_STREAM_ID:
            raise ChannelError("stream ids exhausted; reconnect")
        self._last_local_id = stream_id
        stream = MuxStream(self, stream_id, port, self._window, 0)
        self._streams[stream_id] = stream
        self._send_control(wire.encode_open(stream_id, port, self._window))
        try:
            await asyncio.wait_for(asyncio.shield(stream.accepted), timeout)
        except TimeoutError:
            stream.abort("open timed out")
            self._forget(stream)
            raise ChannelError(
                f"{self.peer_name}: port {port} did not answer within {timeout} s"
            ) from None
        except BaseException:
            self._forget(stream)
            raise
        return stream

    async def close(self) -> None:
        self._teardown("closed locally")
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()

    @property
    def stream_count(self) -> int:
        return len(self._streams)

    # --- frame dispatch ---

    def _dispatch_buffered(self) -> None:
        while not self.closed.is_set():
            if not self.established.is_set():
                hello = self._decoder.hunt_hello()
                if hello is None:
                    return
                self._on_hello(hello)
                continue
            frame = self._decoder.next_frame()
            if frame is None:
                return
            if frame.type is FrameType.HELLO:
                self._on_hello(wire.parse_hello(frame.payload))
                continue
            try:
                self._dispatch(frame)
            except ProtocolError as exc:
                # Never answer a RESET with a RESET: two ends doing so would bounce one frame
                # for an unknown stream between them for ever.
                self._stream_violation(frame.stream_id, str(exc),
                                       reply=frame.type is not FrameType.RESET)

    def _on_hello(self, hello: wire.Hello) -> None:
        if hello.role is self.role:
            raise MuxConnectionError(f"peer claims our own role {hello.role.name}")
        restarted = self.established.is_set() and hello.session != self._peer_session
        if restarted:
            self._violations.log(logging.INFO, "peer restarted (new HELLO); resetting all streams")
            self._reset_all("peer restarted")
            # A new peer numbers its streams from the start again.
            self._last_peer_id = 0 if self.role is Role.HOST else -1
        duplicate = self.established.is_set() and not restarted
        self._peer_session = hello.session
        self.established.set()
        if not hello.reply and not duplicate:
            self._send_control(wire.encode_hello(self.role, reply=True, session=self._session))

    def _dispatch(self, frame: wire.Frame) -> None:
        wire.check_payload_size(frame)
        sid = frame.stream_id
        if frame.type is FrameType.OPEN:
            self._on_open(sid, wire.parse_open(frame.payload))
            return
        stream = self._streams.get(sid)
        if stream is None:
            if self._is_stale(sid):
                return  # in flight when we forgot the stream; harmless
            raise ProtocolError(f"{frame.type.name} for unknown stream")
        if frame.type is FrameType.DATA:
            stream._on_data(frame.payload)
        elif frame.type is FrameType.CREDIT:
            stream._on_credit(wire.parse_credit(frame.payload))
        elif frame.type is FrameType.EOF:
            stream._on_eof()
        elif frame.type is FrameType.RESET:
            stream._on_reset(f"reset by peer: {wire.parse_reason(frame.payload)}")
            self._forget(stream)
        elif frame.type is FrameType.ACCEPT:
            if self._is_peer_id(sid) or stream.accepted.done():
                raise ProtocolError("unexpected ACCEPT")
            stream._on_credit(wire.parse_accept(frame.payload))
            stream.accepted.set_result(None)
        elif frame.type is FrameType.REFUSE:
            if self._is_peer_id(sid) or stream.accepted.done():
                raise ProtocolError("unexpected REFUSE")
            reason = wire.parse_reason(frame.payload)
            stream.accepted.set_exception(StreamRefusedError(stream.port, reason))
            stream._reset_reason = f"refused: {reason}"
            self._forget(stream)

    def _on_open(self, sid: int, untrusted_open: wire.Open) -> None:
        if not self._is_peer_id(sid) or sid <= self._last_peer_id:
            raise ProtocolError("OPEN with a stream id the peer may not use")
        self._last_peer_id = sid
        if self._acceptor is None:
            # Refused at once: no stream object or task for a peer that may send millions.
            self._send_control(wire.encode_reason(FrameType.REFUSE, sid,
                                                  "this side accepts no streams"))
            return
        stream = MuxStream(self, sid, untrusted_open.port, self._window, untrusted_open.window)
        self._streams[sid] = stream
        task = asyncio.create_task(self._serve_incoming(stream))
        self._handler_tasks.add(task)
        task.add_done_callback(self._handler_tasks.discard)

    async def _serve_incoming(self, stream: MuxStream) -> None:
        try:
            if self._acceptor is None:
                raise StreamRefusedError(stream.port, "this side accepts no streams")
            handler = await self._acceptor(stream.port)
        except StreamRefusedError as exc:
            if not stream.is_reset:
                self._send_control(
                    wire.encode_reason(FrameType.REFUSE, stream.stream_id, exc.reason)
                )
                stream._on_reset("refused")
            self._forget(stream)
            return
        if stream.is_reset:
            return
        self._send_control(wire.encode_accept(stream.stream_id, self._window))
        stream.accepted.set_result(None)
        try:
            await handler(stream)
        except ChannelError:
            pass
        except Exception:
            log.exception("%s: handler for port %d failed", self.peer_name, stream.port)
        finally:
            await stream.close()

    def _stream_violation(self, sid: int, reason: str, *, reply: bool = True) -> None:
        self._violations.log(
            logging.WARNING, "protocol violation on mux stream %d: %s; resetting that stream",
            sid, reason,
        )
        stream = self._streams.get(sid)
        if stream is not None:
            stream._on_reset(f"protocol violation: {reason}")
            self._forget(stream)
        if reply:
            self._send_control(wire.encode_reason(FrameType.RESET, sid, "protocol violation"))

    def _is_peer_id(self, sid: int) -> bool:
        return sid % 2 != self._parity

    def _is_stale(self, sid: int) -> bool:
        last = self._last_peer_id if self._is_peer_id(sid) else self._last_local_id
        return sid <= last

    # --- sending and bookkeeping ---

    def _send(self, frame: bytes) -> None:
        if self.closed.is_set():
            raise StreamResetError(
                f"mux connection to {self.peer_name} is closed: {self.close_reason}"
            )
        self._writer.write(frame)

    def _send_control(self, frame: bytes) -> None:
        """Send a small frame without waiting for the pipe to drain (the reader loop sends
        most of them and must not block). A peer can make us send them at the rate it sends
        cheap frames; if it stops reading, the write buffer grows past ``_queue_limit`` and the
        connection is dropped (logged once), its buffer freed."""
        if self.closed.is_set():
            return
        self._writer.write(frame)
        queued = self._queued()
        if queued > self._queue_limit():
            log.warning("%s: peer is not reading its replies (%d bytes queued toward it); "
                        "disconnecting", self.peer_name, queued)
            self._teardown(f"peer stopped reading: {queued} bytes queued", discard=True)

    def _queued(self) -> int:
        try:
            return self._writer.transport.get_write_buffer_size()
        except NotImplementedError:  # a transport that keeps no buffer of its own
            return 0

    def _queue_limit(self) -> int:
        """What may be queued toward the peer: each stream's writer puts at most one DATA
        frame in the buffer beyond the transport's high-water mark before it waits for a
        drain; control replies get ``MAX_QUEUED_CONTROL`` on top."""
        try:
            _, high = self._writer.transport.get_write_buffer_limits()
        except NotImplementedError:
            high = 0
        return MAX_QUEUED_CONTROL + high + _MAX_DATA_FRAME * len(self._streams)

    async def _drain(self) -> None:
        try:
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            self._teardown(f"connection lost: {exc}")
            raise StreamResetError(str(exc)) from exc

    def _forget(self, stream: MuxStream) -> None:
        if self._streams.get(stream.stream_id) is stream:
            del self._streams[stream.stream_id]

    def _reset_all(self, reason: str) -> None:
        for stream in list(self._streams.values()):
            stream._on_reset(reason)
        self._streams.clear()

    def _teardown(self, reason: str, *, discard: bool = False) -> None:
        """End the connection. ``discard``: drop what is queued instead of flushing it first
        (``close`` would keep it, and the descriptor, for as long as the peer does not read)."""
        if self.closed.is_set():
            return
        self.close_reason = reason
        self.closed.set()
        self._violations.flush()
        self._reset_all(reason)
        if discard:
            self._writer.transport.abort()
        else:
            self._writer.close()
        # Wake ``run``: on a character device the reading side is a separate transport
        # that closing the writer does not end.
        self._reader.feed_eof()
