"""vm-run as a user calls it (argv in, exit status and output out), through a real control
server and supervisor to the real agent in the fake VMM: arguments, environment values and
the working directory reach the command as the exact bytes given, UTF-8 or not; a command the
agent would refuse is refused before vmsilod is contacted, in one line, with status 255."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support.fake_core import Core
from vmsilo.cli import vm_run as vm_run_cli
from vmsilo.daemon.server import ControlServer
from vmsilo.protocol.exec import MAX_ARG_LEN, MAX_ARGUMENTS

pytestmark = pytest.mark.timeout(90)


class Served:
    def __init__(self, core: Core, socket: Path) -> None:
        self.socket = socket
        self.supervisor = core.supervisor()
        self.server = ControlServer(self.supervisor, socket, {os.geteuid()}, None)


@pytest.fixture
def core(tmp_path: Path) -> Iterator[Core]:
    made = Core(tmp_path)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
async def served(core: Core, tmp_path: Path) -> AsyncIterator[Served]:
    made = Served(core, tmp_path / "ctl" / "control.socket")
    await made.server.start()
    yield made
    await made.server.close()
    await made.supervisor.stop_all()


async def vm_run(socket: Path, *args: str | bytes) -> tuple[int, bytes, bytes]:
    """Run the vm-run command with ``args`` (bytes as the kernel passes them)."""
    env = {**os.environ, "VMSILO_CONTROL_SOCKET": str(socket)}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vmsilo.cli.vm_run", *args, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await child.communicate()
    assert child.returncode is not None
    return child.returncode, out, err


async def test_non_utf8_arguments_env_and_cwd_arrive_as_the_exact_bytes(
        served: Served, tmp_path: Path) -> None:
    where = os.fsencode(tmp_path) + b"/d\xe9j\xe0"
    os.mkdir(where)
    with open(where + b"/caf\xe9.txt", "wb") as f:
        f.write(b"contents of caf\xe9.txt\n")
    status, out, err = await vm_run(served.socket, "-T", "-C", where, "alpha", "--",
                                    "cat", b"caf\xe9.txt")
    assert (status, out, err) == (0, b"contents of caf\xe9.txt\n", b"")
    status, out, err = await vm_run(
        served.socket, "-T", "alpha", "--", "sh", "-c", 'printf "%s|" "$1" "$PWD"', "sh",
        b"arg\xe9 with space")
    home = os.fsencode(os.path.expanduser("~"))
    assert (status, out, err) == (0, b"arg\xe9 with space|" + home + b"|", b"")
    # env, not a shell: shells drop variables whose names are not portable
    status, out, err = await vm_run(served.socket, "-T", "-e", b"V\xff=\xfe\xfd", "-e",
                                    b"W=caf\xe9", "alpha", "--", "env")
    assert status == 0, (out, err)
    assert b"\nV\xff=\xfe\xfd\n" in out and b"\nW=caf\xe9\n" in out


async def test_a_missing_program_named_in_bytes_is_reported_like_a_shell(
        served: Served) -> None:
    status, out, err = await vm_run(served.socket, "-T", "alpha", "--", b"/nonexistent/x\xff")
    assert (status, out) == (127, b"")
    assert err == b"vmsilo-agent: /nonexistent/x\xff: No such file or directory\n"


async def test_over_a_mebibyte_of_arguments_is_refused_before_contacting_vmsilod(
        tmp_path: Path) -> None:
    # No vmsilod at this socket: the refusal must come first.
    args = ["x" * 100_000] * 11
    status, out, err = await vm_run(tmp_path / "none.socket", "-T", "alpha", "--", "true", *args)
    assert (status, out) == (255, b"")
    assert err == (
        b"vm-run: cannot send this command to VM alpha: the command's arguments and environment "
        b"take 1100016 bytes (each string counted with its NUL); at most %d can be sent\n"
        % MAX_ARGUMENTS)


def test_an_argument_over_the_agents_limit_is_refused_in_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    # Linux itself refuses a single argument this long to a new program; a caller of main()
    # can still try.
    monkeypatch.setenv("VMSILO_CONTROL_SOCKET", str(tmp_path / "none.socket"))
    assert vm_run_cli.main(["-T", "alpha", "--", "true", "x" * (MAX_ARG_LEN + 1)]) == 255
    out, err = capsys.readouterr()
    assert out == ""
    assert err == ("vm-run: cannot send this command to VM alpha: field 'argv[1]': "
                   f"length {MAX_ARG_LEN + 1} outside 0..{MAX_ARG_LEN}\n")


async def test_a_bad_user_is_refused_in_one_line(tmp_path: Path) -> None:
    status, _, err = await vm_run(tmp_path / "none.socket", "-u", b"r\xe9", "alpha", "true")
    assert status == 255
    assert err.count(b"\n") == 1 and err.startswith(b"vm-run: cannot send this command")


@pytest.mark.parametrize("name", ["bad name!", b"caf\xe9", "a" * 300])
async def test_a_bad_vm_name_is_refused_in_one_line_before_contacting_vmsilod(
        tmp_path: Path, name: str | bytes) -> None:
    status, out, err = await vm_run(tmp_path / "none.socket", name, "true")
    assert (status, out) == (255, b"")
    assert err.count(b"\n") == 1 and b"is not a VM name (field 'vm': " in err
