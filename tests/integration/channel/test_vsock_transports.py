"""Hybrid vsock against the fake CONNECT peer (with the real exec service behind it), and
kernel vsock as far as this machine allows."""

from __future__ import annotations

import asyncio
import errno
import getpass
import socket
from pathlib import Path

import pytest

from vmsilo.agent.exec_service import ExecConfig, serve_exec_stream
from vmsilo.channel.exec_client import ExecClient, hello
from vmsilo.channel.stream import ChannelError, SocketStream, StreamRefusedError
from vmsilo.channel.transports import HybridVsockTransport, VsockTransport
from vmsilo.protocol.exec import PROTOCOL_VERSION, ExecRequest, ExitStatus
from vmsilo.testing.hybrid_peer import HybridVsockPeer


async def exec_service(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await serve_exec_stream(
        SocketStream(reader, writer), ExecConfig(default_user=getpass.getuser())
    )


async def test_hybrid_vsock_runs_a_command(tmp_path: Path) -> None:
    async with HybridVsockPeer(tmp_path / "vsock.sock", {5000: exec_service}) as peer:
        client = ExecClient(HybridVsockTransport(peer.path), "chvm", open_timeout=5)
        out = bytearray()

        async def collect(chunk: bytes) -> None:
            out.extend(chunk)

        status = await client.run(
            ExecRequest(argv=["sh", "-c", "cat; exit 4"], env={}),
            stdin=b"via hybrid",
            stdout=collect,
        )
        assert status == ExitStatus(code=4)
        assert bytes(out) == b"via hybrid"
        assert (await client.status()).running == 0
        assert peer.requested_ports == [5000, 5000]


async def test_hybrid_vsock_closed_port_is_refused(tmp_path: Path) -> None:
    async with HybridVsockPeer(tmp_path / "vsock.sock", {}) as peer:
        with pytest.raises(StreamRefusedError):
            await HybridVsockTransport(peer.path).open_stream(5001, timeout=5)
        assert peer.requested_ports == [5001]


@pytest.mark.parametrize("reply", [b"NO 5\n", b"OK x\n", b"OK " + b"1" * 100 + b"\n"])
async def test_hybrid_vsock_bad_reply_is_rejected(tmp_path: Path, reply: bytes) -> None:
    async with HybridVsockPeer(tmp_path / "vsock.sock", {5000: exec_service}, reply=reply) as peer:
        with pytest.raises(ChannelError, match="unexpected handshake reply"):
            await HybridVsockTransport(peer.path).open_stream(5000, timeout=5)


async def test_hybrid_vsock_missing_socket(tmp_path: Path) -> None:
    with pytest.raises(ChannelError, match="cannot connect"):
        await HybridVsockTransport(tmp_path / "absent.sock").open_stream(5000, timeout=5)


def _vsock_usable() -> str | None:
    try:
        socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM).close()
    except OSError as exc:
        return f"AF_VSOCK sockets cannot be created here: {exc}"
    return None


async def test_vsock_connect_to_absent_guest_fails_cleanly() -> None:
    reason = _vsock_usable()
    if reason:
        pytest.skip(reason)
    # CID 4242 has no guest: depending on the kernel's transports this is refused, reset,
    # unreachable or times out; every outcome must be a ChannelError, never a hang.
    with pytest.raises(ChannelError):
        await VsockTransport(4242).open_stream(5000, timeout=2)


async def test_vsock_loopback_exec() -> None:
    reason = _vsock_usable()
    if reason:
        pytest.skip(reason)
    server_sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    try:
        server_sock.bind((socket.VMADDR_CID_ANY, socket.VMADDR_PORT_ANY))
    except OSError as exc:
        server_sock.close()
        pytest.skip(f"cannot bind a vsock port: {exc}")
    server_sock.listen()
    port = server_sock.getsockname()[1]
    server = await asyncio.start_server(exec_service, sock=server_sock)
    try:
        client = ExecClient(VsockTransport(1), "loopback", open_timeout=2)  # VMADDR_CID_LOCAL
        try:
            stream = await client.transport.open_stream(port, timeout=2)
        except ChannelError as exc:
            cause = exc.__cause__
            code = cause.errno if isinstance(cause, OSError) else None
            why = errno.errorcode.get(code or 0, str(exc))
            pytest.skip(f"no vsock loopback transport on this kernel ({why})")
        try:
            agent = await hello(stream, "loopback")
            assert agent.protocol == PROTOCOL_VERSION
        finally:
            await stream.close()
    finally:
        server.close()
        await server.wait_closed()
