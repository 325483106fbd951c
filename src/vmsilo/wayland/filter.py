"""The filter's I/O: a listening socket for one VM; per connection, a connection to the
compositor (through the VM's security-context socket when there is one) and two threads
moving messages through a ``Session``.

Threads rather than asyncio: each direction is a blocking ``recvmsg`` → filter → ``sendmsg``
loop that must carry file descriptors, which asyncio's streams cannot, and a blocking send is
the back-pressure the compositor expects. The session's table is shared by both directions,
so each pass through it holds the connection's lock.
"""

from __future__ import annotations

import array
import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vmsilo.wayland.protocols import Interface
from vmsilo.wayland.session import Output, Session, ViolationError

log = logging.getLogger("vmsilo.wayland")

READ_SIZE = 65536
# libwayland reads at most 28 descriptors per message batch (MAX_FDS_OUT); a sender that
# attaches more to one send loses them on the receiving side.
MAX_FDS_PER_SEND = 28
MAX_CONNECTIONS = 64
# Room to receive more than a well-behaved peer sends in one go (a batch that still does not
# fit is cut by the kernel, MSG_CTRUNC, and treated as a violation).
MAX_FDS_PER_RECEIVE = 4 * MAX_FDS_PER_SEND
_CMSG_SPACE = socket.CMSG_SPACE(MAX_FDS_PER_RECEIVE * 4)  # 4 bytes per descriptor


def receive(sock: socket.socket) -> tuple[bytes, list[int]]:
    """Bytes and descriptors; (b"", []) at end of stream."""
    data, ancillary, flags, _ = sock.recvmsg(READ_SIZE, _CMSG_SPACE, socket.MSG_CMSG_CLOEXEC)
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds_array = array.array("i")
            fds_array.frombytes(payload[: len(payload) - len(payload) % 4])
            fds.extend(fds_array)
    if flags & socket.MSG_CTRUNC:
        for fd in fds:
            os.close(fd)
        raise ViolationError("more file descriptors in one send than a Wayland peer may send")
    return data, fds


def send(sock: socket.socket, output: Output) -> None:
    """Send every message, attaching each message's descriptors to the send that starts
    with it, at most MAX_FDS_PER_SEND per send; the descriptors are closed afterwards."""
    try:
        batch = bytearray()
        batch_fds: list[int] = []
        for data, fds in output.messages:
            if batch_fds and len(batch_fds) + len(fds) > MAX_FDS_PER_SEND:
                _send_batch(sock, batch, batch_fds)
                batch, batch_fds = bytearray(), []
            batch += data
            batch_fds.extend(fds)
        if batch:
            _send_batch(sock, batch, batch_fds)
    finally:
        output.close_fds()


def _send_batch(sock: socket.socket, data: bytearray, fds: list[int]) -> None:
    view = memoryview(data)
    if fds:
        sent = sock.sendmsg([view], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                      array.array("i", fds))])
        view = view[sent:]
    while view:
        sent = sock.send(view)
        view = view[sent:]


@dataclass
class Stats:
    connections: int = 0
    violations: int = 0
    messages: int = 0
    hidden: set[str] = field(default_factory=set)


class Filter:
    """Serves one VM: ``listen_path`` is where the VM's side (waypipe) connects;
    ``connect_upstream`` opens a connection to the compositor."""

    def __init__(self, vm: str, tables: dict[str, Interface], listen_path: Path,
                 connect_upstream: Callable[[], socket.socket]) -> None:
        self.vm = vm
        self.tables = tables
        self.listen_path = listen_path
        self.connect_upstream = connect_upstream
        self.stats = Stats()
        self._lock = threading.Lock()
        self._active = 0
        self._listener: socket.socket | None = None

    def listen(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.listen_path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        listener.bind(str(self.listen_path))
        os.chmod(self.listen_path, 0o600)
        listener.listen(16)
        self._listener = listener

    def serve_forever(self) -> None:
        assert self._listener is not None
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                if self._active >= MAX_CONNECTIONS:
                    log.warning("VM %s: more than %d Wayland connections; refusing one",
                                self.vm, MAX_CONNECTIONS)
                    client.close()
                    continue
                self._active += 1
            threading.Thread(target=self._connection, args=(client,), daemon=True).start()

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()

    def _connection(self, client: socket.socket) -> None:
        session = Session(self.vm, self.tables)
        try:
            try:
                upstream = self.connect_upstream()
            except OSError as exc:
                log.warning("VM %s: cannot reach the compositor: %s", self.vm, exc)
                return
            with self._lock:
                self.stats.connections += 1
            lock = threading.Lock()
            done = threading.Event()
            reasons: list[str] = []

            def pump(source: socket.socket, sink: socket.socket, from_client: bool) -> None:
                try:
                    while not done.is_set():
                        data, fds = receive(source)
                        if not data:
                            for fd in fds:
                                os.close(fd)
                            return
                        with lock:
                            output = (session.from_client(data, fds) if from_client
                                      else session.from_server(data, fds))
                        send(sink, output)
                except ViolationError as exc:
                    reasons.append(str(exc))
                except OSError:
                    pass
                finally:
                    done.set()
                    for sock in (client, upstream):
                        with contextlib.suppress(OSError):
                            sock.shutdown(socket.SHUT_RDWR)

            other = threading.Thread(target=pump, args=(upstream, client, False), daemon=True)
            other.start()
            pump(client, upstream, True)
            other.join()
            upstream.close()
            with self._lock:
                self.stats.messages += session.messages
                self.stats.hidden |= session.hidden
                if reasons:
                    self.stats.violations += 1
            if reasons:
                log.warning("VM %s: Wayland connection closed: %s", self.vm, reasons[0])
            else:
                log.info("VM %s: Wayland client left (%d messages, %d windows)", self.vm,
                         session.messages, session.toplevels)
        finally:
            session.close()
            client.close()
            with self._lock:
                self._active -= 1
