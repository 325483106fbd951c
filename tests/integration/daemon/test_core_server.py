"""The control socket (``ControlServer``) in front of a real ``Supervisor`` over the fake VMM,
spoken to as the command-line tools speak to it: status, start, stop, a guest command run
through the spliced ``open`` stream (what vm-run does), the console, user errors as replies,
and a peer whose uid is not allowed refused before anything it asked is done."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.fake_core import ROOT, Core
from vmsilo.channel.exec_client import ExecSession
from vmsilo.channel.stream import SocketStream
from vmsilo.cli import client
from vmsilo.daemon.server import ControlServer
from vmsilo.daemon.supervisor import Supervisor
from vmsilo.errors import UserError
from vmsilo.host import proc
from vmsilo.protocol import control
from vmsilo.protocol.exec import EXEC_PORT, ExecRequest, ExitStatus
from vmsilo.testing.fake_vmm import Faults

# A hang is a failure with a traceback, not a stuck suite.
pytestmark = pytest.mark.timeout(60)


class Served:
    def __init__(self, core: Core, socket: Path, allowed: set[int],
                 group: int | None = None) -> None:
        self.core = core
        self.socket = socket
        self.supervisor: Supervisor = core.supervisor()
        self.server = ControlServer(self.supervisor, socket, allowed, group)

    async def call(self, **fields: object) -> dict[str, object]:
        """One request as the CLI sends it; a refusal is the CLI's UserError."""
        conn = await client.connect(self.socket)
        try:
            return await conn.request(control.Request(**fields))  # type: ignore[arg-type]
        finally:
            await conn.close()

    async def raw(self, line: bytes) -> dict[str, object]:
        reader, writer = await asyncio.open_unix_connection(str(self.socket))
        try:
            writer.write(line)
            await writer.drain()
            return control.decode_reply(await control.read_line(reader))
        finally:
            writer.close()


@pytest.fixture
async def served(core: Core, tmp_path: Path) -> AsyncIterator[Served]:
    made = Served(core, tmp_path / "ctl" / "control.socket", {os.geteuid()})
    await made.server.start()
    yield made
    await made.server.close()
    await made.supervisor.stop_all()


async def test_status_start_and_stop(served: Served) -> None:
    reply = await served.call(op="status")
    assert [(vm["name"], vm["state"]) for vm in reply["vms"]] == [  # type: ignore[attr-defined]
        ("alpha", "stopped"), ("beta", "stopped")]
    assert (await served.call(op="start", vm="alpha"))["ok"] is True
    rows = (await served.call(op="status"))["vms"]
    alpha = rows[0]  # type: ignore[index]
    assert alpha["state"] == "running" and alpha["pid"] == served.core.backend.processes[0].pid
    assert (await served.call(op="stop", vm="alpha"))["how"] == "guest powered off"
    await served.call(op="start", vm="beta")
    assert (await served.call(op="stop", all=True))["stopped"] == ["beta: guest powered off"]
    assert served.core.backend.launches == ["alpha", "beta"]


async def test_a_command_runs_through_the_spliced_stream_starting_the_vm(
        served: Served) -> None:
    conn = await client.connect(served.socket)
    await conn.request(control.Request(op="open", vm="alpha", port=EXEC_PORT, start=True,
                                       timeout=30.0))
    stream = SocketStream(conn.reader, conn.writer)
    out, err = bytearray(), bytearray()

    async def to_out(data: bytes) -> None:
        out.extend(data)

    async def to_err(data: bytes) -> None:
        err.extend(data)

    request = ExecRequest(argv=["sh", "-c", "tr a-z A-Z; echo done >&2; exit 3"], env={})
    session = await ExecSession.start(stream, request, "alpha")
    status = await session.pump(b"through the control socket\n", to_out, to_err)
    await session.close()
    assert status == ExitStatus(code=3)
    assert (bytes(out), bytes(err)) == (b"THROUGH THE CONTROL SOCKET\n", b"done\n")
    assert served.core.backend.launches == ["alpha"]


async def test_the_console_is_spliced(served: Served) -> None:
    await served.call(op="start", vm="alpha")
    conn = await client.connect(served.socket)
    try:
        await conn.request(control.Request(op="console", vm="alpha"))
        assert await conn.reader.readline() == b"fake console of alpha\n"
        conn.writer.write(b"typed\n")
        await conn.writer.drain()
        assert await asyncio.wait_for(conn.reader.readline(), 10) == b"typed\n"
    finally:
        await conn.close()


async def test_user_errors_come_back_as_replies(served: Served) -> None:
    with pytest.raises(UserError, match="unknown VM 'gamma'"):
        await served.call(op="start", vm="gamma")
    with pytest.raises(UserError, match="VM alpha is stopped; start it with: vm-start alpha"):
        await served.call(op="open", vm="alpha", port=EXEC_PORT, start=False)
    with pytest.raises(UserError, match="its console exists only while it runs"):
        await served.call(op="console", vm="alpha")
    served.core.backend.faults["alpha"] = Faults(exit_at_start=6)
    with pytest.raises(UserError, match=r"VM alpha failed to start: VMM: .*status 6"):
        await served.call(op="start", vm="alpha")
    reply = await served.raw(b'{"op": "start", "vm": "../etc"}\n')
    assert reply["ok"] is False and "bad request" in str(reply["error"])
    assert (await served.call(op="ping"))["ok"] is True  # the server goes on


async def test_a_uid_that_is_not_allowed_is_refused_before_anything_is_done(
        core: Core, tmp_path: Path) -> None:
    served = Served(core, tmp_path / "ctl" / "control.socket", {os.geteuid() + 1})
    await served.server.start()
    try:
        with pytest.raises(UserError, match=f"permission denied: uid {os.geteuid()} may not "
                                            "control vmsilo VMs"):
            await served.call(op="start", vm="alpha")
        assert core.backend.launches == []
        assert [row["state"] for row in served.supervisor.status()] == ["stopped", "stopped"]
    finally:
        await served.server.close()


PEER = """
import socket, sys
sock = socket.socket(socket.AF_UNIX)
sock.connect(sys.argv[1])
sock.sendall(b'{"op": "start", "vm": "alpha"}\\n')
print(sock.makefile("rb").readline().decode(), end="")
"""


@pytest.mark.skipif(not ROOT or shutil.which("python3") is None, reason="needs root")
async def test_another_user_is_refused_by_its_credentials(core: Core) -> None:
    """A real peer running as ``nobody``: the socket's group lets it connect, its uid
    (SO_PEERCRED) is not among the allowed ones."""
    where = Path(tempfile.mkdtemp(prefix="vmsilo-ctl-", dir="/tmp"))
    where.chmod(0o755)
    served = Served(core, where / "control.socket", {0}, group=65534)
    await served.server.start()
    try:
        peer = proc.spawn(["/usr/bin/python3", "-c", PEER, str(served.socket)],
                          stdout=subprocess.PIPE, user=65534, group=65534, extra_groups=[])
        out, _ = await asyncio.to_thread(peer.communicate, timeout=30)
        reply = control.decode_reply(out.strip())
        assert reply["ok"] is False
        assert "permission denied: uid 65534 may not control vmsilo VMs" in reply["error"]
        assert core.backend.launches == []
    finally:
        await served.server.close()
        shutil.rmtree(where)
