"""The agent's guest path: the multiplexer on a character device it opens itself (a raw PTY
stands in for /dev/virtio-ports/vmsilo.mux), with garbage from a previous host in front."""

from __future__ import annotations

import asyncio
import getpass
import os
import subprocess
import sys
import tty
from pathlib import Path

from vmsilo.agent.server import _port_streams
from vmsilo.channel.exec_client import ExecClient
from vmsilo.channel.mux import MuxConnection
from vmsilo.host import proc
from vmsilo.protocol.exec import ExecRequest, ExitStatus
from vmsilo.protocol.mux import Role


async def test_agent_serves_the_mux_on_a_character_device(tmp_path: Path) -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    # A per-test name, so that no other agent (say, one left by a killed run) can open the
    # PTY that later reuses this number.
    device = tmp_path / "vmsilo.mux"
    device.symlink_to(os.ttyname(slave))
    os.write(master, b"stale bytes from an earlier host connection")
    agent = proc.spawn(
        [
            sys.executable,
            "-m",
            "vmsilo.agent",
            "--mux-device",
            str(device),
            "--ports-dir",
            str(tmp_path / "ports"),
            "--default-user",
            getpass.getuser(),
        ],
        stderr=subprocess.PIPE,
        env={"PYTHONPATH": str(Path(__file__).resolve().parents[3] / "src")},
    )
    host_fd = os.dup(master)
    reader, writer, feeder = await _port_streams(host_fd)
    conn = MuxConnection(reader, writer, role=Role.HOST, peer_name="vm devtest")
    runner = asyncio.create_task(conn.run())
    try:
        await asyncio.wait_for(conn.established.wait(), 20)
        out = bytearray()

        async def collect(chunk: bytes) -> None:
            out.extend(chunk)

        client = ExecClient(conn, "devtest", open_timeout=10)
        status = await client.run(
            ExecRequest(argv=["sh", "-c", "head -c 3000000 /dev/zero | wc -c; exit 5"], env={}),
            stdout=collect,
        )
        assert status == ExitStatus(code=5)
        assert bytes(out).strip() == b"3000000"
    finally:
        await conn.close()
        await asyncio.gather(runner, return_exceptions=True)
        feeder.stop()
        writer.close()
        os.close(host_fd)
        agent.terminate()
        agent.wait(10)
        if agent.stderr is not None:
            agent.stderr.close()
        os.close(slave)
        os.close(master)
