"""A guest program answering garbage on its port disturbs neither the multiplexer nor a
command running concurrently (the system test's scenario, run against a real agent)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from vmsilo.channel.exec_client import ExecClient, hello
from vmsilo.channel.guest_ports import start_port_server
from vmsilo.channel.transports import SerialMuxTransport
from vmsilo.protocol.errors import ProtocolError
from vmsilo.protocol.exec import ExecRequest, ExitStatus

from .conftest import AgentProcess

GARBAGE = b"\xff\xff\xff\xff\x99 this is not an exec frame" * 50


async def test_garbage_on_one_stream_while_a_command_runs(
    agent: AgentProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def answer_garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(GARBAGE)
        await writer.drain()
        await reader.read()
        writer.close()

    fake_device = tmp_path / "vmsilo.mux"
    fake_device.touch()  # "the mux transport is in use": listen on the unix socket
    server = await start_port_server(
        5999, answer_garbage, mux_device=fake_device, ports_dir=agent.ports_dir
    )
    transport = SerialMuxTransport(agent.mux_socket, "testvm")
    client = ExecClient(transport, "testvm", open_timeout=10)
    try:
        out = bytearray()

        async def collect(chunk: bytes) -> None:
            out.extend(chunk)

        command = asyncio.create_task(
            client.run(
                ExecRequest(argv=["sh", "-c", "sleep 0.5; echo still-here"], env={}),
                stdout=collect,
            )
        )
        await asyncio.sleep(0.1)
        garbage_stream = await transport.open_stream(5999, timeout=5)
        with caplog.at_level(logging.WARNING), pytest.raises(ProtocolError):
            await hello(garbage_stream, "testvm")
        assert "vm testvm" in caplog.text
        assert await asyncio.wait_for(command, 10) == ExitStatus(code=0)
        assert bytes(out) == b"still-here\n"
        # The multiplexer connection survived: the same transport still works.
        assert transport.connected
        assert (await client.status()).running == 0
    finally:
        await transport.close()
        server.close()
        await server.wait_closed()


async def test_streams_to_a_guest_service_are_spliced(agent: AgentProcess, tmp_path: Path) -> None:
    async def upper(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()  # until the host half-closes
        writer.write(data.upper())
        await writer.drain()
        writer.close()

    fake_device = tmp_path / "vmsilo.mux"
    fake_device.touch()
    server = await start_port_server(5997, upper, mux_device=fake_device, ports_dir=agent.ports_dir)
    transport = SerialMuxTransport(agent.mux_socket, "testvm")
    try:
        stream = await transport.open_stream(5997, timeout=5)
        payload = b"abc" * 100_000
        await stream.write(payload)
        await stream.write_eof()
        received = bytearray()
        while chunk := await stream.read():
            received += chunk
        assert bytes(received) == payload.upper()
        await stream.close()
    finally:
        await transport.close()
        server.close()
        await server.wait_closed()
