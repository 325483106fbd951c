"""Waiting on raw file descriptors from asyncio: readiness of pipes, PTY masters and pidfds.

The exec service reads and writes the command's descriptors itself (instead of asyncio's
pipe transports) so that it reads only when the host has credit: that is the backpressure
that stops a fast command when its reader stalls.
"""

from __future__ import annotations

import asyncio


def _set(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def wait_readable(fd: int, timeout: float | None = None) -> bool:
    """True once ``fd`` is readable (or at EOF/error), False if ``timeout`` passed first."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    loop.add_reader(fd, _set, ready)
    try:
        await asyncio.wait_for(ready, timeout)
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)
    return True


async def wait_writable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    loop.add_writer(fd, _set, ready)
    try:
        await ready
    finally:
        loop.remove_writer(fd)
