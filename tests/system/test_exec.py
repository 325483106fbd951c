"""Commands in a real VM, through vm-run, as a user runs them (issue: the QEMU backend boots a
VM and runs commands in it)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import time
from pathlib import Path

import pytest

from tests.support.daemon import RunningDaemon
from vmsilo.channel.exec_client import ExecSession
from vmsilo.channel.stream import ChannelError, SocketStream
from vmsilo.cli import client
from vmsilo.protocol import control
from vmsilo.protocol.errors import ProtocolError
from vmsilo.protocol.exec import ExecRequest

pytestmark = pytest.mark.timeout(900)


def test_uname_and_hostname(alpha: RunningDaemon) -> None:
    uname = alpha.cli("vm-run", "alpha", "--", "uname", "-a")
    assert uname.returncode == 0, uname.stderr
    assert uname.stdout.startswith(b"Linux alpha ")
    hostname = alpha.cli("vm-run", "alpha", "cat", "/etc/hostname")
    assert hostname.stdout == b"alpha\n"


def test_commands_run_as_user_by_default_or_as_asked(alpha: RunningDaemon) -> None:
    assert alpha.cli("vm-run", "alpha", "id", "-un").stdout == b"user\n"
    assert alpha.cli("vm-run", "alpha", "pwd").stdout == b"/home/user\n"
    assert alpha.cli("vm-run", "-u", "root", "alpha", "id", "-u").stdout == b"0\n"
    env = alpha.cli("vm-run", "-e", "GREETING=hi there", "-C", "/tmp", "alpha",
                    "sh", "-c", 'echo "$GREETING in $(pwd)"')
    assert env.stdout == b"hi there in /tmp\n"


def test_stdin_is_streamed(alpha: RunningDaemon) -> None:
    result = alpha.cli("vm-run", "alpha", "sha256sum", input=b"x" * 3_000_000)
    assert result.stdout.split()[0].decode() == hashlib.sha256(b"x" * 3_000_000).hexdigest()


def test_exit_status_and_stderr(alpha: RunningDaemon) -> None:
    result = alpha.cli("vm-run", "alpha", "sh", "-c", "echo oops >&2; exit 3")
    assert result.returncode == 3
    assert result.stderr == b"oops\n"
    assert alpha.cli("vm-run", "alpha", "no-such-program").returncode == 127


def test_death_by_signal(alpha: RunningDaemon) -> None:
    result = alpha.cli("vm-run", "alpha", "sh", "-c", "kill -TERM $$; sleep 5")
    assert result.returncode == 128 + 15


def test_ctrl_c_is_forwarded(alpha: RunningDaemon) -> None:
    run = alpha.popen("vm-run", "alpha", "sh", "-c",
                      "trap 'echo got INT; exit 42' INT; echo ready; sleep 60 & wait")
    assert run.stdout is not None
    assert run.stdout.readline() == b"ready\n"
    run.send_signal(2)
    out, _ = run.communicate(timeout=60)
    assert out == b"got INT\n"
    assert run.returncode == 42


def test_twenty_commands_at_once(alpha: RunningDaemon) -> None:
    def one(i: int) -> tuple[int, bytes]:
        result = alpha.cli("vm-run", "alpha", "sh", "-c", f"sleep 1; echo {i}")
        return result.returncode, result.stdout

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, range(20)))
    assert results == [(0, f"{i}\n".encode()) for i in range(20)]


def test_100_mib_of_stdout_arrives_intact(alpha: RunningDaemon) -> None:
    prepare = alpha.cli("vm-run", "alpha", "sh", "-c",
                        "head -c 104857600 /dev/urandom > /dev/shm/blob && "
                        "sha256sum /dev/shm/blob")
    assert prepare.returncode == 0, prepare.stderr
    expected = prepare.stdout.split()[0].decode()
    started = time.monotonic()
    result = alpha.cli("vm-run", "alpha", "cat", "/dev/shm/blob")
    elapsed = time.monotonic() - started
    assert result.returncode == 0
    assert len(result.stdout) == 104857600
    assert hashlib.sha256(result.stdout).hexdigest() == expected
    print(f"100 MiB in {elapsed:.1f} s")
    alpha.cli("vm-run", "alpha", "rm", "/dev/shm/blob")


GARBAGE_SERVICE = r"""
import os, socket
os.makedirs("/run/vmsilo/ports", exist_ok=True)
path = "/run/vmsilo/ports/5999.sock"
if os.path.exists(path):
    os.unlink(path)
server = socket.socket(socket.AF_UNIX)
server.bind(path)
server.listen()
while True:
    conn, _ = server.accept()
    # A well-framed exec message (length 9, type 1) whose payload is not JSON.
    conn.sendall(b"\x00\x00\x00\x09\x01\xff\xfe garbage")
"""


async def _talk_to_garbage(socket_path: Path) -> BaseException | None:
    conn = await client.connect(socket_path)
    await conn.request(control.Request(op="open", vm="alpha", port=5999, start=False,
                                       timeout=10))
    stream = SocketStream(conn.reader, conn.writer)
    try:
        await ExecSession.start(stream, ExecRequest(argv=["true"], env={}), "alpha")
    except (ProtocolError, ChannelError) as exc:
        return exc
    finally:
        await stream.close()
    return None


def test_malformed_frame_from_the_guest_closes_only_its_stream(alpha: RunningDaemon) -> None:
    install = alpha.cli("vm-run", "-u", "root", "alpha", "sh", "-c",
                        "cat > /run/garbage.py; setsid python3 /run/garbage.py "
                        "</dev/null >/dev/null 2>&1 &", input=GARBAGE_SERVICE.encode())
    assert install.returncode == 0, install.stderr
    probe = alpha.cli("vsock-connect", "--probe", "--timeout", "20", "alpha", "5999")
    for _ in range(40):
        if probe.returncode == 0:
            break
        time.sleep(0.5)
        probe = alpha.cli("vsock-connect", "--probe", "alpha", "5999")
    assert probe.returncode == 0, probe.stderr
    # A long command runs while the bad stream is read and torn down.
    concurrent_run = alpha.popen("vm-run", "alpha", "sh", "-c",
                                 "sleep 2; seq 1 200000 | sha256sum")
    error = asyncio.run(_talk_to_garbage(alpha.socket))
    assert isinstance(error, ProtocolError), error
    out, err = concurrent_run.communicate(timeout=120)
    expected = hashlib.sha256(b"".join(b"%d\n" % i for i in range(1, 200001))).hexdigest()
    assert concurrent_run.returncode == 0, err
    assert out.split()[0].decode() == expected
    assert alpha.cli("vm-run", "alpha", "true").returncode == 0  # the VM is fine
