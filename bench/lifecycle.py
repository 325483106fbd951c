"""What a user waits for (issue 4): warm and cold ``vm-run``, against the channel's baselines.

A real vmsilod (``tests.support.daemon.RunningDaemon``: its own throwaway root, the cached test
image) manages the default ``demo`` VM; the installed ``vm-run`` command talks to it. The
baselines come from the same VM configuration booted directly by the benchmark (as in
``bench.channel``), in the same run, alternating with the daemon's runs:

4. warm ``vm-run demo true`` (the VM runs; a new process each time) vs. the raw exec round
   trip (``ExecClient.run`` of ``true`` over the benchmark's own ``SerialMuxTransport``).
   Two more rows split the difference: the same exec asked of vmsilod in-process (control
   socket ``open`` + exec protocol, no new process) against the raw exec, and warm vm-run
   against ``vm-run --help`` (the interpreter's start and vm-run's imports alone).
5. cold ``vm-run demo true`` (the VM is stopped; vm-run starts it, then runs ``true``) vs.
   boot to agent hello of the directly booted VM.

Run as root: ``.venv/bin/python -m bench.lifecycle``
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from rich.console import Console
from tests.support.daemon import RunningDaemon

from bench import vms
from bench.channel import HANG_TIMEOUT, exec_true, timed_boot
from bench.common import Comparison, Sample, print_comparisons
from vmsilo.channel.exec_client import ExecSession
from vmsilo.channel.stream import SocketStream
from vmsilo.cli import client
from vmsilo.protocol import control
from vmsilo.protocol.exec import EXEC_PORT, ExecRequest

ROUNDS = 3  # each: one cold vm-run, warm runs, one direct boot, raw execs
MAX_COLD_ATTEMPTS = 3
# vm-run asks vmsilod to wait 60 s for a start; a start the daemon gives up on earlier than its
# default 180 s ends sooner, so that a hung boot costs less of the benchmark's time.
AGENT_TIMEOUT = "100"
WARM_RUNS = 8
RAW_RUNS = 8


class CliError(RuntimeError):
    pass


def timed_cli(daemon: RunningDaemon, *argv: str) -> float:
    start = time.perf_counter()
    result = daemon.cli(*argv, timeout=HANG_TIMEOUT * 2)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise CliError(f"{' '.join(argv)} exited with {result.returncode}: "
                       f"{result.stderr.decode(errors='replace').strip()}")
    return elapsed


def console_tail(daemon: RunningDaemon, lines: int = 2) -> str:
    log = daemon.root / "state" / "logs" / vms.VM_NAME / "console.log"
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    return " | ".join(text.strip().splitlines()[-lines:])


def daemon_ended(daemon: RunningDaemon) -> bool:
    return daemon.process is not None and daemon.process.poll() is not None


def cold_vm_run(daemon: RunningDaemon, failures: list[str]) -> float:
    """A cold ``vm-run demo true``; a start that fails (a hung boot) is noted and retried."""
    for _attempt in range(MAX_COLD_ATTEMPTS):
        try:
            return timed_cli(daemon, "vm-run", vms.VM_NAME, "true")
        except CliError as exc:
            if daemon_ended(daemon):
                raise
            failures.append(f"cold vm-run: {exc}; console ends with: {console_tail(daemon)!r}")
            daemon.cli("vm-stop", vms.VM_NAME, timeout=300)
    raise RuntimeError(f"{MAX_COLD_ATTEMPTS} cold starts in a row failed")


async def exec_through_daemon(daemon: RunningDaemon) -> float:
    """``true`` run the way vm-run runs it, minus the new process."""
    start = time.perf_counter()
    conn = await client.connect(daemon.socket)
    try:
        await conn.request(control.Request(op="open", vm=vms.VM_NAME, port=EXEC_PORT,
                                           start=False, timeout=30.0))
    except BaseException:
        await conn.close()
        raise
    session = await ExecSession.start(SocketStream(conn.reader, conn.writer),
                                      ExecRequest(argv=["true"], env={}), vms.VM_NAME)
    async with session:
        status = await session.pump()
    elapsed = time.perf_counter() - start
    if status.shell_status() != 0:
        raise RuntimeError(f"true ended with {status.shell_status()} through vmsilod")
    return elapsed


async def direct_round(image: Path, work: vms.WorkDir,
                       failures: list[str]) -> tuple[float, list[float]]:
    """One direct boot to hello, then raw exec round trips; the VM is stopped after."""
    hello, vm = await timed_boot(lambda: vms.demo_spec(image, work.paths()), False, failures)
    assert vm is not None
    try:
        for _ in range(2):  # warm-up, as the daemon's VM had
            await exec_true(vm)
        return hello, [await exec_true(vm) for _ in range(RAW_RUNS)]
    finally:
        await vm.stop()


def main() -> None:
    console = Console(width=120)
    started = time.monotonic()
    image = vms.test_image()
    work = vms.WorkDir()
    daemon = RunningDaemon(vms.DEMO_CONFIG, extra_env={"VMSILO_AGENT_TIMEOUT": AGENT_TIMEOUT})
    failures: list[str] = []
    cold: list[float] = []
    warm: list[float] = []
    via_daemon: list[float] = []
    startup: list[float] = []
    hello: list[float] = []
    raw: list[float] = []
    try:
        daemon.start()
        index = 0
        restarts = 0
        while index < ROUNDS:
            console.log(f"round {index + 1}/{ROUNDS}: cold and warm vm-run")
            try:
                round_cold = cold_vm_run(daemon, failures)
                timed_cli(daemon, "vm-run", vms.VM_NAME, "true")  # warm-up
                round_warm: list[float] = []
                round_via: list[float] = []
                round_startup: list[float] = []
                for _ in range(WARM_RUNS):
                    round_warm.append(timed_cli(daemon, "vm-run", vms.VM_NAME, "true"))
                    round_via.append(asyncio.run(exec_through_daemon(daemon)))
                    round_startup.append(timed_cli(daemon, "vm-run", "--help"))
                timed_cli(daemon, "vm-stop", vms.VM_NAME)
            except (CliError, OSError) as exc:
                # Seen on a shared machine: vmsilod ended by a SIGTERM from outside (exit
                # status 0). Start a new one and redo the round rather than lose the run.
                if not daemon_ended(daemon) or restarts >= MAX_COLD_ATTEMPTS:
                    raise
                restarts += 1
                status = daemon.process.returncode if daemon.process else None
                failures.append(f"vmsilod ended (status {status}) during round {index + 1}: "
                                f"{exc}")
                daemon.cli("vm-stop", "--all", timeout=120)
                daemon._kill_leftover_vmms()
                daemon.start()
                continue
            cold.append(round_cold)
            warm += round_warm
            via_daemon += round_via
            startup += round_startup
            console.log(f"round {index + 1}/{ROUNDS}: direct boot and raw exec")
            boot_seconds, raw_times = asyncio.run(direct_round(image, work, failures))
            hello.append(boot_seconds)
            raw.extend(raw_times)
            index += 1
    except Exception as exc:
        ours = [line for line in daemon.log().splitlines() if "qemu.qmp" not in line]
        status = daemon.process.poll() if daemon.process else None
        console.print(f"vmsilod (exit status {status}) log ends with:\n" + "\n".join(ours[-15:]))
        if not hello:
            raise
        console.print(f"[red]stopped early ({exc}); the table has the complete rounds only[/]")
    finally:
        daemon.stop()
        work.remove()

    ms = 1000.0
    rows = [
        Comparison("4. warm `vm-run demo true` (VM running)",
                   Sample("vm-run demo true", [t * ms for t in warm], "ms"),
                   Sample("raw exec round trip", [t * ms for t in raw], "ms")),
        Comparison("4b. the daemon's share: exec through vmsilod, in-process",
                   Sample("control open + exec", [t * ms for t in via_daemon], "ms"),
                   Sample("raw exec round trip", [t * ms for t in raw], "ms")),
        Comparison("4c. the new process's share",
                   Sample("vm-run demo true", [t * ms for t in warm], "ms"),
                   Sample("vm-run --help", [t * ms for t in startup], "ms")),
        Comparison("5. cold `vm-run demo true` (VM stopped)",
                   Sample("vm-run demo true, cold", cold, "s"),
                   Sample("direct boot to agent hello", hello, "s")),
    ]
    print_comparisons("VM lifecycle: what vm-run costs vs. baselines in the same run", rows,
                      console)
    for failure in failures:
        console.print(f"[yellow]failed start, retried:[/] {failure}")
    console.print(f"total {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
