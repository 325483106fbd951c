"""A fake VMM backend: vmsilod's stateful core (``VmController``, ``Supervisor``, the control
server) tested for real on a machine without virtual machines.

``FakeBackend`` implements ``hypervisor.base.Backend`` at its lowest seam. ``launch`` binds the
VM's control, channel and console sockets in the runtime directory it is given (as the QEMU
backend does) and spawns a fake VMM *process*, ``python -m vmsilo.testing.fake_vmm``, with the
listening descriptors. That process serves:

- the channel socket with the real guest agent (``vmsilo.agent``): the multiplexer, the exec
  service on port 5000 (hello, commands, idle report, poweroff), running commands on the host
  as the current user. The agent's poweroff command signals the fake VMM (``SIGUSR1``), which
  then exits with status 0, as QEMU does when its guest powers off;
- the control socket with a line protocol standing in for QMP: ``ping`` -> ``pong``,
  ``powerdown`` (the ACPI power button: exit 0, as a guest that powers off) and ``quit`` (exit
  0 now), each answered ``ok``;
- the console socket as an echo, after a banner that also goes to the console log.

``Faults`` are the knobs a test turns to make it misbehave: exit at start, answer the control
socket late, never let the agent say hello (or only after a delay), crash later with a chosen
status, ignore power-off requests (agent and ACPI), ignore ``quit`` and ``SIGTERM`` (so only
``SIGKILL`` ends it). The process is watched through a pidfd like a real VMM
(``VmmProcess``), so a later vmsilod can re-adopt it from the root-owned runtime directory.

The fake does not jail its process (``jail`` is recorded, not applied) and does not open the
VM's disks. Commands still running in the fake guest when it ends are killed with it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import pwd
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import vmsilo
from vmsilo.host import proc
from vmsilo.hypervisor.base import Backend, VmmLaunchError, VmmProcess
from vmsilo.hypervisor.spec import LaunchSpec

log = logging.getLogger(__name__)

MODULE = "vmsilo.testing.fake_vmm"
POWEROFF_SIGNAL = signal.SIGUSR1  # the agent's poweroff command sends it to the fake VMM
CONTROL_REPLY_LIMIT = 64


@dataclass(frozen=True)
class Faults:
    """How one fake VMM misbehaves; the default behaves. Times are in seconds."""

    exit_at_start: int | None = None  # exit with this status before serving anything
    slow_start: float = 0.0  # the control socket answers only after this long
    no_hello: bool = False  # the guest never boots: the channel is accepted, nothing answers
    boot_delay: float = 0.0  # the agent answers only after this long (a slow boot)
    crash_after: float | None = None  # once serving, exit with ``crash_status`` after this long
    crash_status: int = 1
    ignore_poweroff: bool = False  # the agent acknowledges, the guest never goes down; ACPI too
    ignore_quit: bool = False  # ``quit`` and SIGTERM are ignored: only SIGKILL ends it
    poweroff_delay: float = 0.0  # how long a powering-off guest takes to go down

    def argv(self) -> list[str]:
        """These faults as options of the fake VMM's command line."""
        words: list[str] = []
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if value == item.default:
                continue
            option = "--" + item.name.replace("_", "-")
            words += [option] if value is True else [option, str(value)]
        return words

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--exit-at-start", type=int)
        parser.add_argument("--slow-start", type=float, default=0.0)
        parser.add_argument("--no-hello", action="store_true")
        parser.add_argument("--boot-delay", type=float, default=0.0)
        parser.add_argument("--crash-after", type=float)
        parser.add_argument("--crash-status", type=int, default=1)
        parser.add_argument("--ignore-poweroff", action="store_true")
        parser.add_argument("--ignore-quit", action="store_true")
        parser.add_argument("--poweroff-delay", type=float, default=0.0)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Faults:
        return cls(**{item.name: getattr(args, item.name) for item in dataclasses.fields(cls)})


# -- the backend (runs in vmsilod, i.e. in the test) -------------------------------------------


@dataclass
class FakeBackend(Backend):
    """``Backend`` whose VMM is a fake VMM process. ``faults`` by VM name, else ``default``;
    both may be changed between starts. ``launches`` lists the VMs launched, in order;
    ``jails`` what the controller asked each to run as; ``processes`` every process spawned
    (``close`` kills and reaps those still running)."""

    name = "fake"

    faults: dict[str, Faults] = field(default_factory=dict)
    default: Faults = Faults()
    start_timeout: float = 30.0  # how long launch waits for the control socket to answer
    launches: list[str] = field(default_factory=list)
    jails: dict[str, Any] = field(default_factory=dict)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    async def launch(self, spec: LaunchSpec, *, runtime: Any, console_log: int, vmm_log: int,
                     jail: Any, on_spawn: Any = None) -> VmmProcess:
        faults = self.faults.get(spec.name, self.default)
        self.launches.append(spec.name)
        self.jails[spec.name] = jail
        layout = spec.layout
        argv = [sys.executable, "-m", MODULE, "--name", spec.name,
                "--console-log-fd", str(console_log)]
        with contextlib.ExitStack() as stack:
            passed = [console_log]
            for role, path in (("control", layout.control_socket),
                               ("channel", layout.channel_socket),
                               ("console", layout.console_socket)):
                sock = runtime.listen_unix(path.name)
                stack.callback(sock.close)
                argv += [f"--{role}-fd", str(sock.fileno())]
                passed.append(sock.fileno())
            argv += faults.argv()
            popen = proc.spawn(argv, stdout=vmm_log, stderr=vmm_log, pass_fds=passed,
                               env={"PYTHONPATH": str(Path(vmsilo.__file__).parents[1])})
        self.processes.append(popen)
        vmm = VmmProcess(popen.pid, popen)
        try:
            if on_spawn is not None:
                on_spawn(vmm)
            await self._until_control_answers(spec, vmm, argv)
        except BaseException:
            # Cancelled (the stage's timeout, vmsilod exiting) or failed: the caller never
            # gets this VMM, so nobody else could stop it.
            vmm.kill()
            popen.wait()
            vmm.close()
            raise
        return vmm

    async def _until_control_answers(self, spec: LaunchSpec, vmm: VmmProcess,
                                     argv: list[str]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        while True:
            if vmm.exited():
                await vmm.wait(5)
                raise VmmLaunchError(spec.name, f"exited at start with status "
                                     f"{vmm.returncode}", argv, spec.layout.vmm_log)
            # The socket is bound before the fake serves it: connecting always works, an
            # answer is what counts.
            with contextlib.suppress(OSError, TimeoutError, EOFError):
                if await self._command(spec, "ping", timeout=0.5) == "pong":
                    return
            if loop.time() > deadline:
                raise VmmLaunchError(spec.name, "control socket never answered", argv,
                                     spec.layout.vmm_log)
            await asyncio.sleep(0.02)

    @staticmethod
    async def _command(spec: LaunchSpec, command: str, timeout: float = 5.0) -> str:
        """One line to the fake's control socket, one line back."""
        async def exchange() -> str:
            reader, writer = await asyncio.open_unix_connection(str(spec.layout.control_socket))
            try:
                writer.write(command.encode() + b"\n")
                await writer.drain()
                line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            if not line.endswith(b"\n"):
                raise EOFError(f"the fake VMM of {spec.name} closed its control connection")
            return line[:CONTROL_REPLY_LIMIT].decode(errors="replace").strip()

        return await asyncio.wait_for(exchange(), timeout)

    async def request_shutdown(self, spec: LaunchSpec) -> None:
        await self._command(spec, "powerdown")

    async def quit(self, spec: LaunchSpec) -> None:
        await self._command(spec, "quit")

    def close(self) -> None:
        """Kill and reap every fake VMM this backend spawned that still runs (test cleanup)."""
        for popen in self.processes:
            if popen.poll() is None:
                popen.kill()
            popen.wait()


# -- the fake VMM process -----------------------------------------------------------------------


class FakeVmm:
    def __init__(self, name: str, faults: Faults, console_log: int) -> None:
        self.name = name
        self.faults = faults
        self.console_log = console_log
        self.exit_status: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.log = logging.getLogger(f"fake-vmm.{name}")

    def console(self, text: str) -> None:
        with contextlib.suppress(OSError):
            os.write(self.console_log, f"[fake {self.name}] {text}\n".encode())

    def finish(self, status: int, why: str) -> None:
        if not self.exit_status.done():
            self.log.info("exiting with status %d: %s", status, why)
            self.console(why)
            self.exit_status.set_result(status)

    def power_off(self, source: str) -> None:
        if self.faults.ignore_poweroff:
            self.log.info("ignoring the power-off request (%s)", source)
            return
        self.log.info("guest powering off (%s)", source)
        asyncio.get_running_loop().call_later(self.faults.poweroff_delay, self.finish, 0,
                                              "guest powered off")

    async def serve_control(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                command = line.strip().decode(errors="replace")
                if command == "ping":
                    writer.write(b"pong\n")
                elif command in ("powerdown", "quit"):
                    writer.write(b"ok\n")
                else:
                    writer.write(b"error unknown command\n")
                await writer.drain()
                if command == "powerdown":
                    self.power_off("ACPI power button")
                elif command == "quit":
                    if self.faults.ignore_quit:
                        self.log.info("ignoring quit")
                    else:
                        self.finish(0, "quit")
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def serve_console(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(f"fake console of {self.name}\n".encode())
            while data := await reader.read(4096):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def hold_silently(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        """A channel whose guest never boots: bytes are taken and nothing comes back."""
        try:
            while await reader.read(65536):
                pass
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def run(self, control: socket.socket, channel: socket.socket,
                  console: socket.socket) -> int:
        from vmsilo.agent.exec_service import ExecConfig
        from vmsilo.agent.server import Agent

        faults = self.faults
        if faults.exit_at_start is not None:
            self.log.error("exiting at start with status %d (fault injected)",
                           faults.exit_at_start)
            return faults.exit_at_start
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(POWEROFF_SIGNAL, self.power_off, "the agent's poweroff command")
        if faults.ignore_quit:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        else:
            loop.add_signal_handler(signal.SIGTERM, self.finish, 0, "terminated by SIGTERM")
        if faults.slow_start:
            await asyncio.sleep(faults.slow_start)
        servers = [await asyncio.start_unix_server(self.serve_control, sock=control),
                   await asyncio.start_unix_server(self.serve_console, sock=console)]
        self.console("booting")
        if faults.crash_after is not None:
            loop.call_later(faults.crash_after, self.finish, faults.crash_status,
                            "crashed (fault injected)")
        with tempfile.TemporaryDirectory(prefix="fake-vmm-ports-") as ports:
            boot: asyncio.Task[None] | None = None
            if faults.no_hello:
                servers.append(await asyncio.start_unix_server(self.hold_silently,
                                                               sock=channel))
            else:
                config = ExecConfig(
                    default_user=pwd.getpwuid(os.getuid()).pw_name,
                    poweroff_command=["/bin/sh", "-c",
                                      f"kill -{POWEROFF_SIGNAL.name[3:]} {os.getpid()}"])
                agent = Agent(config, Path(ports))
                boot = loop.create_task(self._serve_agent(agent, channel, servers))
            status = await self.exit_status
            if boot is not None:
                boot.cancel()
            for server in servers:
                server.close()
        _kill_guest_commands()
        return status

    async def _serve_agent(self, agent: Any, channel: socket.socket,
                           servers: list[asyncio.Server]) -> None:
        if self.faults.boot_delay:
            await asyncio.sleep(self.faults.boot_delay)
        servers.append(await asyncio.start_unix_server(agent.run_mux, sock=channel))
        self.console("agent up")


def _kill_guest_commands() -> None:
    """Commands the agent started run in their own sessions; a guest powering off takes them
    along (``/proc/self/task/*/children``, one level: the agent's direct children)."""
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):
            for word in (task / "children").read_text().split():
                with contextlib.suppress(OSError):
                    os.killpg(int(word), signal.SIGKILL)
                with contextlib.suppress(OSError):
                    os.kill(int(word), signal.SIGKILL)


def _listening(fd: int) -> socket.socket:
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    return sock


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--channel-fd", type=int, required=True)
    parser.add_argument("--console-fd", type=int, required=True)
    parser.add_argument("--console-log-fd", type=int, required=True)
    Faults.add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format=f"fake-vmm {args.name} %(levelname)s %(name)s: %(message)s")
    faults = Faults.from_args(args)

    async def run() -> int:
        vmm = FakeVmm(args.name, faults, args.console_log_fd)
        return await vmm.run(_listening(args.control_fd), _listening(args.channel_fd),
                             _listening(args.console_fd))

    status = asyncio.run(run())
    sys.stdout.flush()
    sys.stderr.flush()
    # No interpreter teardown: agent streams still open would only delay the exit.
    os._exit(status)


if __name__ == "__main__":
    main()
