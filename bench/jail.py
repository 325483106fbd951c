"""What the VMM's jail costs (issue 14): a cold start of the default VM — QEMU spawned, its
control socket answering, the guest agent's hello — with QEMU jailed as vmsilod runs it
(bubblewrap namespaces, prlimit, setpriv to the VM's own uid) vs. the same QEMU started the old
way (only setpriv to the desktop user, no namespaces), alternating in one run.

Run as root: ``.venv/bin/python -m bench.jail``.
"""

from __future__ import annotations

import asyncio
import time

from rich.console import Console

from bench import vms
from bench.common import Comparison, Sample, print_comparisons
from vmsilo.hypervisor.accel import Accelerator
from vmsilo.hypervisor.spec import LaunchSpec

ROUNDS = 4


class _Unjailed:
    """The baseline: QEMU as the desktop user in vmsilod's namespaces, reporting its pid the
    way bubblewrap's ``--info-fd`` does (the shell's pid is QEMU's after ``exec``)."""

    def sandbox(self, spec: LaunchSpec, accel: Accelerator) -> _Unjailed:
        return self

    def argv(self, command: list[str], *, info_fd: int | None = None) -> list[str]:
        uid, gid = vms.vmm_owner()
        # Reported while still root (the pipe is root's); dash redirects only descriptors
        # 0-9, so the pipe is reopened through /proc.
        report = f'printf \'{{"child-pid": %d}}\' $$ > /proc/self/fd/{info_fd}; exec "$@"'
        return ["sh", "-c", report, "sh", "setpriv", f"--reuid={uid}", f"--regid={gid}",
                "--clear-groups", "--", *command]


async def cold_start(spec: LaunchSpec, jailed: bool) -> tuple[float, float]:
    """(seconds until QEMU's control socket answers, seconds until the agent's hello)."""
    vm = vms.DirectVm(spec, jail=None if jailed else _Unjailed())
    begun = time.perf_counter()
    await vm.start()
    try:
        control = time.perf_counter() - begun
        hello = await asyncio.wait_for(vm.seconds_to_hello(), vms.BOOT_TIMEOUT)
        return control, hello + (vm.started - begun)
    finally:
        await vm.stop()


async def measure(console: Console) -> list[Comparison]:
    image = vms.test_image()
    work = vms.WorkDir()
    results: dict[bool, tuple[list[float], list[float]]] = {True: ([], []), False: ([], [])}
    try:
        for index in range(ROUNDS):
            for jailed in ((True, False) if index % 2 == 0 else (False, True)):
                console.log(f"round {index + 1}/{ROUNDS}: {'jailed' if jailed else 'unjailed'}")
                control, hello = await cold_start(vms.demo_spec(image, work.paths()), jailed)
                results[jailed][0].append(control)
                results[jailed][1].append(hello)
    finally:
        work.remove()
    return [
        Comparison("QEMU spawned until its QMP answers",
                   Sample("jailed", results[True][0], "s"),
                   Sample("unjailed", results[False][0], "s")),
        Comparison("cold start until the guest agent's hello",
                   Sample("jailed", results[True][1], "s"),
                   Sample("unjailed", results[False][1], "s")),
    ]


def main() -> None:
    console = Console()
    rows = asyncio.run(measure(console))
    print_comparisons("The VMM jail's cost (TCG, 2 cores)", rows, console)


if __name__ == "__main__":
    main()
