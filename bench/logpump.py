"""The log pump vs ``cat > file`` (issue 14, item 7): does a capped log keep up with a writer?

A writer (``dd`` from /dev/zero, in 128 KiB and in 4 KiB writes, the latter like a chatty
console) sends 256 MiB through a pipe. Baseline: ``cat`` copies the pipe into a file (no cap,
no rotation). Measured: the pump started by ``logpump.start`` (default 8 MiB cap: 31
rotations per run). Both consumers are already running when the clock starts at the writer's
spawn, and it stops when the consumer exits (it has written everything). Files go to
/var/tmp (the disk vmsilod's logs live on). Alternating, 5 rounds each.

Also shown: the pump's start (``start`` until the pump reports its logs open) vs spawning
and reaping ``true``, and the private memory of a running pump vs a running ``cat``: the
fixed costs one more pump adds to a VM start.

Run: ``.venv/bin/python -m bench.logpump``
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

from rich.console import Console

from bench.common import Comparison, Sample, print_comparisons
from vmsilo.host import logpump, proc
from vmsilo.host.safefs import Dir

ROUNDS = 5
TOTAL = 256 * 1024 * 1024
MIB = 1024 * 1024


def writer(block: int, stdout: int) -> subprocess.Popen[bytes]:
    return proc.spawn(["dd", "if=/dev/zero", f"bs={block}", f"count={TOTAL // block}",
                       "status=none"], stdout=stdout, new_session=False)


def through_cat(directory: Path, block: int) -> float:
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    with open(directory / "cat.out", "wb") as out:
        cat = proc.spawn(["cat"], stdin=read_end, stdout=out, new_session=False)
    os.close(read_end)
    start = time.perf_counter()
    source = writer(block, write_end)
    os.close(write_end)
    source.wait()
    cat.wait()
    elapsed = time.perf_counter() - start
    (directory / "cat.out").unlink()
    return TOTAL / MIB / elapsed


def through_pump(logs: Dir, block: int) -> float:
    pump = logpump.start(logs, ["bench.log"])
    start = time.perf_counter()
    source = writer(block, pump.fd("bench.log"))
    pump.close_write_ends()
    source.wait()
    pump.process.wait()
    elapsed = time.perf_counter() - start
    assert logs.lstat("bench.log").st_size <= logpump.CAP
    return TOTAL / MIB / elapsed


def private_kib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Private_Dirty:"):
            return float(line.split()[1])
    raise RuntimeError("no Private_Dirty line")


def fixed_costs(logs: Dir) -> tuple[list[float], list[float], list[float], list[float]]:
    pump_start, true_start, pump_memory, cat_memory = [], [], [], []
    for _ in range(ROUNDS):
        begin = time.perf_counter()
        pump = logpump.start(logs, ["idle.log"])
        pump_start.append((time.perf_counter() - begin) * 1000)
        begin = time.perf_counter()
        proc.spawn(["true"], new_session=False).wait()
        true_start.append((time.perf_counter() - begin) * 1000)
        time.sleep(0.2)
        pump_memory.append(private_kib(pump.process.pid))
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        cat = proc.spawn(["cat"], stdin=read_end, new_session=False)
        os.close(read_end)
        time.sleep(0.2)
        cat_memory.append(private_kib(cat.pid))
        os.close(write_end)
        cat.wait()
        pump.close_write_ends()
        pump.process.wait()
    return pump_start, true_start, pump_memory, cat_memory


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="bench-logpump-") as name:
        directory = Path(name)
        with Dir.secure(directory / "logs") as logs:
            for block in (128 * 1024, 4096):
                pumped, catted = [], []
                for _ in range(ROUNDS):
                    catted.append(through_cat(directory, block))
                    pumped.append(through_pump(logs, block))
                rows.append(Comparison(
                    f"256 MiB in {block // 1024} KiB writes: MiB/s into a log",
                    Sample("log pump (8 MiB cap)", pumped, "MiB/s"),
                    Sample("cat > file", catted, "MiB/s"), higher_is_better=True))
            pump_start, true_start, pump_memory, cat_memory = fixed_costs(logs)
    rows.append(Comparison("start: ready to take output",
                           Sample("logpump.start", pump_start, "ms"),
                           Sample("spawn and reap true", true_start, "ms")))
    rows.append(Comparison("private memory of a running consumer",
                           Sample("log pump", pump_memory, "KiB"),
                           Sample("cat", cat_memory, "KiB")))
    print_comparisons("Capped logs (issue 14, item 7)", rows, Console())


if __name__ == "__main__":
    main()
