"""The host's exec client against a real agent process over the multiplexer."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import time
from collections.abc import AsyncIterator

import pytest

from vmsilo.channel.exec_client import ExecClient, ExecError
from vmsilo.channel.stream import StreamRefusedError
from vmsilo.channel.transports import SerialMuxTransport
from vmsilo.protocol.exec import PROTOCOL_VERSION, ExecRequest, ExitStatus

from .conftest import AgentProcess


class Collector:
    def __init__(self) -> None:
        self.data = bytearray()

    async def __call__(self, chunk: bytes) -> None:
        self.data += chunk


@pytest.fixture
async def client(agent: AgentProcess) -> AsyncIterator[ExecClient]:
    transport = SerialMuxTransport(agent.mux_socket, "testvm")
    yield ExecClient(transport, "testvm", open_timeout=10)
    await transport.close()


def req(*argv: str, **kwargs: object) -> ExecRequest:
    return ExecRequest(argv=list(argv), env={}, **kwargs)  # type: ignore[arg-type]


async def test_hello_reports_protocol_and_boot_time(client: ExecClient) -> None:
    hello = await client.hello()
    assert hello.protocol == PROTOCOL_VERSION
    assert 0 < hello.boot_time <= time.time()


async def test_echo(client: ExecClient) -> None:
    out, err = Collector(), Collector()
    status = await client.run(req("echo", "hello", "world"), stdout=out, stderr=err)
    assert status == ExitStatus(code=0)
    assert bytes(out.data) == b"hello world\n"
    assert bytes(err.data) == b""


async def test_uname(client: ExecClient) -> None:
    out = Collector()
    status = await client.run(req("uname", "-a"), stdout=out)
    assert status.code == 0
    assert bytes(out.data).startswith(b"Linux ")


async def test_stdin_is_streamed_to_cat(client: ExecClient) -> None:
    out = Collector()
    status = await client.run(req("cat"), stdin=b"line one\nline two\n", stdout=out)
    assert status.code == 0
    assert bytes(out.data) == b"line one\nline two\n"


async def test_exit_code_and_stderr(client: ExecClient) -> None:
    err = Collector()
    status = await client.run(req("sh", "-c", "echo oops >&2; exit 3"), stderr=err)
    assert status == ExitStatus(code=3)
    assert status.shell_status() == 3
    assert bytes(err.data) == b"oops\n"


async def test_death_by_sigterm(client: ExecClient) -> None:
    status = await client.run(req("sh", "-c", "kill -TERM $$"))
    assert status == ExitStatus(signal=signal.SIGTERM)
    assert status.shell_status() == 128 + 15


async def test_env_cwd_and_login_variables(client: ExecClient, tmp_path: object) -> None:
    out = Collector()
    request = ExecRequest(
        argv=["sh", "-c", 'echo "$FOO|$PWD|$USER|$HOME|${PATH:+set}"'],
        env={"FOO": "bar baz"},
        cwd="/tmp",
    )
    status = await client.run(request, stdout=out)
    assert status.code == 0
    user = os.environ.get("USER") or __import__("getpass").getuser()
    home = __import__("pwd").getpwnam(user).pw_dir
    assert bytes(out.data).decode() == f"bar baz|/tmp|{user}|{home}|set\n"


async def test_missing_command_exits_127(client: ExecClient) -> None:
    err = Collector()
    status = await client.run(req("/nonexistent/program"), stderr=err)
    assert status.code == 127
    assert b"/nonexistent/program" in err.data


async def test_unknown_user_is_refused(client: ExecClient) -> None:
    with pytest.raises(ExecError, match="no user 'nosuchuser'"):
        await client.run(req("true", user="nosuchuser"))


async def test_signal_forwarding(client: ExecClient) -> None:
    async with await client.start(
        req("sh", "-c", "trap 'echo got-int; exit 7' INT; echo ready; while :; do sleep 0.05; done")
    ) as session:
        first = await session.next_event()
        assert getattr(first, "data", b"") == b"ready\n"
        await session.send_signal(signal.SIGINT)
        out = Collector()
        status = await session.pump(None, out)
    assert status == ExitStatus(code=7)
    assert bytes(out.data) == b"got-int\n"


async def test_twenty_concurrent_commands(client: ExecClient) -> None:
    async def one(i: int) -> tuple[ExitStatus, bytes]:
        out = Collector()
        status = await client.run(req("sh", "-c", f"sleep 0.2; echo {i}; exit {i % 5}"), stdout=out)
        return status, bytes(out.data)

    results = await asyncio.gather(*(one(i) for i in range(20)))
    assert results == [(ExitStatus(code=i % 5), f"{i}\n".encode()) for i in range(20)]


async def test_large_stdout_checksum(client: ExecClient) -> None:
    size = 24 * 1024 * 1024
    digest = hashlib.sha256()
    received = 0

    async def sink(chunk: bytes) -> None:
        nonlocal received
        digest.update(chunk)
        received += len(chunk)

    script = f"head -c {size} /dev/zero | tr '\\0' 'x'; true"
    started = time.monotonic()
    status = await client.run(req("sh", "-c", script), stdout=sink)
    elapsed = time.monotonic() - started
    assert status.code == 0
    assert received == size
    assert digest.hexdigest() == hashlib.sha256(b"x" * size).hexdigest()
    print(f"stdout throughput over mux: {size / elapsed / 2**20:.1f} MiB/s")


async def test_large_stdin_round_trip(client: ExecClient) -> None:
    payload = os.urandom(8 * 1024 * 1024)
    out = Collector()
    status = await client.run(req("sha256sum"), stdin=payload, stdout=out)
    assert status.code == 0
    assert bytes(out.data).split()[0].decode() == hashlib.sha256(payload).hexdigest()


async def test_stalled_reader_does_not_block_other_streams(client: ExecClient) -> None:
    stalled = await client.start(req("sh", "-c", "head -c 20000000 /dev/zero"))
    try:
        first = await stalled.next_event()  # then stop reading this stream entirely
        assert getattr(first, "data", b"")
        for _ in range(3):
            out = Collector()
            status = await asyncio.wait_for(client.run(req("echo", "alive"), stdout=out), 10)
            assert (status.code, bytes(out.data)) == (0, b"alive\n")
        # The stalled producer is held back by flow control, not buffered without bound.
        report = await client.status()
        assert report.running >= 1
    finally:
        await stalled.close()


async def test_tty_mode_window_size_and_resize(client: ExecClient) -> None:
    request = ExecRequest(
        argv=["sh", "-c", 'stty size; read line; stty size; echo "[$line]"'],
        env={},
        tty=True,
        rows=33,
        cols=101,
    )
    async with await client.start(request) as session:
        out = Collector()
        while b"33 101" not in out.data:
            event = await asyncio.wait_for(session.next_event(), 10)
            assert not isinstance(event, ExitStatus), bytes(out.data)
            await out(event.data)
        await session.resize(40, 120)
        await session.send_stdin(b"typed\n")
        status = await asyncio.wait_for(session.pump(None, out), 10)
    assert status.code == 0
    text = bytes(out.data).replace(b"\r\n", b"\n")
    assert b"33 101\n" in text
    assert b"40 120\n" in text
    assert b"[typed]" in text


async def test_tty_ctrl_c_interrupts_foreground_command(client: ExecClient) -> None:
    request = ExecRequest(argv=["sh", "-c", "echo go; sleep 30"], env={}, tty=True)
    async with await client.start(request) as session:
        out = Collector()
        while b"go" not in out.data:
            event = await asyncio.wait_for(session.next_event(), 10)
            assert not isinstance(event, ExitStatus)
            await out(event.data)
        # dash catches SIGINT itself in `sh -c` mode, and a ^C landing between `echo` and the
        # fork of `sleep` is swallowed (as on any terminal): press it again, as a user would.
        pump = asyncio.create_task(session.pump(None, out))
        for _ in range(20):
            await session.send_stdin(b"\x03")
            done, _ = await asyncio.wait({pump}, timeout=0.5)
            if done:
                break
        assert pump.done(), f"no exit after 20 x ^C; output: {bytes(out.data)!r}"
        status = pump.result()
    assert status == ExitStatus(signal=signal.SIGINT)


async def test_idle_report_counts_running_commands(client: ExecClient) -> None:
    # The agent is shared with earlier tests: one of their commands may still be reaped.
    before = await client.status()
    for _ in range(100):
        if before.running == 0:
            break
        await asyncio.sleep(0.05)
        before = await client.status()
    session = await client.start(req("sh", "-c", "echo up; read x"))
    try:
        await session.next_event()
        during = await client.status()
        assert during.running == before.running + 1
        await session.send_stdin(b"done\n")
        status = await session.pump(None)
        assert status.code == 0
    finally:
        await session.close()
    after = await client.status()
    assert after.running == before.running
    assert after.last_ended is not None
    assert time.time() - 5 < after.last_ended <= time.time()
    assert after.boot_time == before.boot_time


async def test_unknown_port_is_refused_with_reason(agent: AgentProcess) -> None:
    transport = SerialMuxTransport(agent.mux_socket, "testvm")
    try:
        with pytest.raises(StreamRefusedError, match="nothing listens on port 5998"):
            await transport.open_stream(5998, timeout=5)
    finally:
        await transport.close()


async def test_host_reconnect(agent: AgentProcess) -> None:
    for attempt in range(3):
        transport = SerialMuxTransport(agent.mux_socket, "testvm")
        out = Collector()
        status = await ExecClient(transport, "testvm").run(req("echo", str(attempt)), stdout=out)
        assert (status.code, bytes(out.data)) == (0, f"{attempt}\n".encode())
        await transport.close()


async def test_poweroff_runs_the_command(client: ExecClient, agent: AgentProcess) -> None:
    await client.poweroff()
    deadline = time.monotonic() + 10
    while not agent.poweroff_marker.exists():
        assert time.monotonic() < deadline, "poweroff command did not run"
        await asyncio.sleep(0.05)
