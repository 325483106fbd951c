"""The local end of a remote command: stdin as an async source, stdout/stderr as async sinks,
and raw terminal mode.

Reading and writing happen in worker threads so that the event loop stays free for signals
and the other direction, and so that regular files, pipes and terminals all work the same
(asyncio cannot watch regular files). A bounded queue between the reader thread and the
loop keeps memory flat: if the guest stops reading, so do we.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import termios
import threading
import tty
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

CHUNK = 64 * 1024


async def read_fd(fd: int) -> AsyncIterator[bytes]:
    """Chunks from ``fd`` until end of file."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=4)
    ready = threading.Semaphore(4)  # the thread waits for room in the queue

    def reader() -> None:
        while True:
            ready.acquire()
            try:
                data = os.read(fd, CHUNK)
            except OSError:
                data = b""
            loop.call_soon_threadsafe(queue.put_nowait, data)
            if not data:
                return

    threading.Thread(target=reader, daemon=True, name=f"read-fd-{fd}").start()
    while True:
        data = await queue.get()
        ready.release()
        if not data:
            return
        yield data


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fd_sink(fd: int) -> Callable[[bytes], Awaitable[None]]:
    async def sink(data: bytes) -> None:
        # The reader may go away (e.g. `vm-run vm cmd | head`); the exit status still counts.
        with contextlib.suppress(BrokenPipeError):
            await asyncio.get_running_loop().run_in_executor(None, _write_all, fd, data)

    return sink


@contextlib.contextmanager
def raw_mode(fd: int) -> Iterator[None]:
    """Put the terminal in raw mode for the duration (keys go to the guest as typed, ^C
    included); always restore it."""
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def window_size(fd: int) -> tuple[int, int]:
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return 24, 80
    return size.lines, size.columns
