"""How a guest service listens on "port N", whatever the transport.

With the virtio-serial multiplexer (the device ``/dev/virtio-ports/vmsilo.mux`` exists) the
agent owns the port and forwards each stream for port N to the unix socket
``/run/vmsilo/ports/N.sock``; otherwise the service listens on AF_VSOCK port N itself.
``listen_socket`` returns a listening socket for either case; ``start_port_server`` wraps it
in an asyncio server. Guest-side code: standard library only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

MUX_DEVICE = Path("/dev/virtio-ports/vmsilo.mux")
PORTS_DIR = Path("/run/vmsilo/ports")
MAX_PORT = 0xFFFFFFFE


def port_socket_path(port: int, ports_dir: Path = PORTS_DIR) -> Path:
    if not 1 <= port <= MAX_PORT:
        raise ValueError(f"port {port} outside 1..{MAX_PORT}")
    return ports_dir / f"{port}.sock"


def uses_mux(mux_device: Path = MUX_DEVICE) -> bool:
    return mux_device.exists()


def listen_socket(
    port: int,
    *,
    mux_device: Path = MUX_DEVICE,
    ports_dir: Path = PORTS_DIR,
    force_vsock: bool = False,
) -> socket.socket:
    """A listening socket that receives the host's streams to ``port``."""
    if force_vsock or not uses_mux(mux_device):
        sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        try:
            sock.bind((socket.VMADDR_CID_ANY, port))
            sock.listen(64)
        except OSError:
            sock.close()
            raise
        return sock
    path = port_socket_path(port, ports_dir)
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        # Only the agent (root) connects; keep other guest users out.
        os.chmod(path, 0o600)
        sock.listen(64)
    except OSError:
        sock.close()
        raise
    return sock


ConnectionHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def start_port_server(
    port: int,
    handler: ConnectionHandler,
    *,
    mux_device: Path = MUX_DEVICE,
    ports_dir: Path = PORTS_DIR,
    force_vsock: bool = False,
) -> asyncio.Server:
    sock = listen_socket(port, mux_device=mux_device, ports_dir=ports_dir, force_vsock=force_vsock)
    if sock.family == socket.AF_UNIX:
        return await asyncio.start_unix_server(handler, sock=sock)
    return await asyncio.start_server(handler, sock=sock)
