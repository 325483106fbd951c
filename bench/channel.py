"""The guest channel (issue 3): boot to the agent's hello, exec round trip, stdout throughput.

Each measurement has a baseline taken in the same run on the same VM configuration (the
default ``demo`` VM, planned by vmsilod's own planner, booted by ``QemuBackend``):

1. boot to agent hello (QEMU spawned → the agent's hello read over a ``SerialMuxTransport``)
   vs. the same kernel and QEMU command line with a busybox-only initramfs (built here with
   ``vmsilo.image.cpio`` from the image's busybox) whose ``/init`` prints a marker and powers
   off (QEMU spawned → the marker in the console log). Boots of the two kinds alternate.
2. exec round trip of ``true`` (``ExecClient.run``: new stream, hello, request, the command,
   its exit status) vs. a 1-byte write/read on an already open stream to an echo service in
   the guest (a small python3 server behind the agent's port forwarding). A second row adds
   the stream's opening and closing to the echo, which exec pays too.
3. stdout throughput of ``cat`` of a 64 MiB file in the guest's /dev/shm through exec vs.
   the same file sent by the guest service (``sendfile``) on a raw stream.

A boot that does not finish within its hang timeout is killed, counted and retried; the count
is printed under the table. Run as root: ``.venv/bin/python -m bench.channel``
"""

from __future__ import annotations

import asyncio
import time

from rich.console import Console

from bench import vms
from bench.common import Comparison, Sample, print_comparisons
from vmsilo.hypervisor.spec import LaunchSpec
from vmsilo.protocol.exec import ExecRequest

BOOTS = 3
EXEC_RUNS = 20
ECHO_RUNS = 50
THROUGHPUT_RUNS = 3
BLOB_MIB = 64
# A boot that shows nothing for this long has hung (seen here: the kernel stalls in timer
# calibration under software emulation); normal boots take ~5 s (busybox) and ~15-30 s.
BUSYBOX_HANG_TIMEOUT = 40.0
HANG_TIMEOUT = 150.0
MAX_ATTEMPTS_PER_BOOT = 3


class BootHangError(Exception):
    """Every attempt at one boot hung."""


async def timed_boot(spec_for: vms.SpecFactory, busybox: bool, hangs: list[str]) -> tuple[
        float, vms.DirectVm | None]:
    """Seconds from QEMU's spawn to the agent's hello (or, for ``busybox``, the marker).
    Returns the still running VM after a full boot, so the caller may keep using it."""
    for _attempt in range(MAX_ATTEMPTS_PER_BOOT):
        vm = vms.DirectVm(spec_for())
        await vm.start()
        try:
            if busybox:
                seconds = await asyncio.wait_for(
                    vm.seconds_to_console(vms.BUSYBOX_MARKER), BUSYBOX_HANG_TIMEOUT)
                await vm.stop()
                return seconds, None
            seconds = await asyncio.wait_for(vm.seconds_to_hello(), HANG_TIMEOUT)
            return seconds, vm
        except TimeoutError:
            limit = BUSYBOX_HANG_TIMEOUT if busybox else HANG_TIMEOUT
            hangs.append(f"{'busybox' if busybox else 'image'} boot: not done after "
                         f"{limit:.0f} s; console ends with: {vm.console_tail()!r}")
            await vm.stop()
        except BaseException:
            await vm.stop()
            raise
    raise BootHangError(f"{MAX_ATTEMPTS_PER_BOOT} boots in a row did not finish; see the hangs")


async def exec_true(vm: vms.DirectVm) -> float:
    client = vm.client()
    start = time.perf_counter()
    status = await client.run(ExecRequest(argv=["true"], env={}))
    elapsed = time.perf_counter() - start
    if status.shell_status() != 0:
        raise RuntimeError(f"true ended with {status.shell_status()} in the guest")
    return elapsed


async def echo_on_fresh_stream(vm: vms.DirectVm) -> float:
    start = time.perf_counter()
    stream = await vms.open_echo(vm)
    try:
        await vms.echo_round_trip(stream)
    finally:
        await stream.close()
    return time.perf_counter() - start


async def cat_throughput(vm: vms.DirectVm, size: int) -> float:
    received = 0

    async def count(data: bytes) -> None:
        nonlocal received
        received += len(data)

    start = time.perf_counter()
    status = await vm.client().run(ExecRequest(argv=["cat", vms.BLOB], env={}), stdout=count)
    elapsed = time.perf_counter() - start
    if status.shell_status() != 0 or received != size:
        raise RuntimeError(f"cat of {size} bytes: status {status.shell_status()}, "
                           f"{received} bytes arrived")
    return size / elapsed / (1 << 20)


async def raw_throughput(vm: vms.DirectVm, size: int) -> float:
    received = 0
    start = time.perf_counter()
    assert vm.transport is not None
    stream = await vm.transport.open_stream(vms.SOURCE_PORT, 10)
    try:
        while chunk := await stream.read():
            received += len(chunk)
    finally:
        await stream.close()
    elapsed = time.perf_counter() - start
    if received != size:
        raise RuntimeError(f"raw stream: {received} of {size} bytes arrived")
    return size / elapsed / (1 << 20)


async def measure(console: Console) -> tuple[list[Comparison], list[str]]:
    image = vms.test_image()
    work = vms.WorkDir()
    hangs: list[str] = []
    vm: vms.DirectVm | None = None
    try:
        busybox_initrd = vms.busybox_initramfs(image, work.path / "busybox-initrd.img")

        def image_spec() -> LaunchSpec:
            return vms.demo_spec(image, work.paths())

        def busybox_spec() -> LaunchSpec:
            return vms.demo_spec(image, work.paths(), initrd=busybox_initrd)

        hello_times: list[float] = []
        busybox_times: list[float] = []
        for index in range(BOOTS):
            console.log(f"boot {index + 1}/{BOOTS}: busybox initramfs, then the image")
            seconds, _ = await timed_boot(busybox_spec, True, hangs)
            busybox_times.append(seconds)
            seconds, booted = await timed_boot(image_spec, False, hangs)
            hello_times.append(seconds)
            assert booted is not None
            if index < BOOTS - 1:
                await booted.stop()
            else:
                vm = booted
        assert vm is not None

        console.log("exec and echo round trips")
        await vms.start_guest_services(vm)
        for _ in range(3):  # warm-up: first runs page in the guest's python and commands
            await exec_true(vm)
            await echo_on_fresh_stream(vm)
        exec_times = [await exec_true(vm) for _ in range(EXEC_RUNS)]
        echo_stream = await vms.open_echo(vm)
        try:
            echo_times = [await vms.echo_round_trip(echo_stream) for _ in range(ECHO_RUNS)]
        finally:
            await echo_stream.close()
        fresh_echo_times = [await echo_on_fresh_stream(vm) for _ in range(EXEC_RUNS)]

        console.log(f"throughput of {BLOB_MIB} MiB")
        size = BLOB_MIB << 20
        await vms.run_checked(vm.client(), ["sh", "-c", f"head -c {size} /dev/urandom "
                                            f"> {vms.BLOB}"])
        cat_rates: list[float] = []
        raw_rates: list[float] = []
        for _ in range(THROUGHPUT_RUNS):  # alternated, so that drift hits both alike
            cat_rates.append(await cat_throughput(vm, size))
            raw_rates.append(await raw_throughput(vm, size))
    finally:
        if vm is not None:
            await vm.stop()
        work.remove()

    ms = 1000.0
    rows = [
        Comparison("1. boot to agent hello (QEMU spawn → first output)",
                   Sample("agent hello", hello_times, "s"),
                   Sample("busybox /init marker", busybox_times, "s")),
        Comparison("2. exec round trip of `true`",
                   Sample("ExecClient.run(true)", [t * ms for t in exec_times], "ms"),
                   Sample("1-byte echo, open stream", [t * ms for t in echo_times], "ms")),
        Comparison("2b. exec round trip, stream set-up included in the baseline",
                   Sample("ExecClient.run(true)", [t * ms for t in exec_times], "ms"),
                   Sample("open + 1-byte echo + close", [t * ms for t in fresh_echo_times],
                          "ms")),
        Comparison(f"3. stdout throughput ({BLOB_MIB} MiB from /dev/shm)",
                   Sample("exec cat", cat_rates, "MiB/s"),
                   Sample("raw stream (sendfile)", raw_rates, "MiB/s"),
                   higher_is_better=True),
    ]
    return rows, hangs


def main() -> None:
    console = Console(width=120)
    started = time.monotonic()
    rows, hangs = asyncio.run(measure(console))
    print_comparisons("Guest channel: vmsilo vs. baselines in the same run", rows, console)
    for hang in hangs:
        console.print(f"[yellow]hung boot, retried:[/] {hang}")
    console.print(f"total {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
