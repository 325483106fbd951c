"""Sequential I/O through a shared folder (issue 6): write and read throughput on a virtiofs
share vs. the same I/O on the guest's root overlay disk, in one run.

A real vmsilod runs one VM with a share (the installed virtiofsd, default options) and a disk
overlay. In the guest, a python3 loop writes 64 MiB in 1 MiB blocks and fsyncs, then, after
dropping the guest's and the host's page caches, reads it back; it reports its own timings
(``time.monotonic`` in the guest, so vm-run's overhead is not counted). Share and overlay
alternate, 3 rounds.

Run as root: ``.venv/bin/python -m bench.shares``
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from rich.console import Console
from tests.support.daemon import BIN, RunningDaemon
from tests.support.images import build_default_image

from bench.common import Comparison, Sample, print_comparisons

ROUNDS = 3
MIB = 64
NOBODY = 65534

CONFIG = """
enable = true
user = "nobody"

[vms.io]
memory = 1024
cpus = 2
gpu = false
sound.playback = false
sharedHome = false
sharedDirectories.bench = {{ path = "{root}/srv/bench" }}
"""

# argv: directory, MiB; prints "<write seconds> <read seconds>"
IO = (
    "import os,sys,time\n"
    "d, n = sys.argv[1], int(sys.argv[2]); path = os.path.join(d, 'bench.bin')\n"
    "block = os.urandom(1 << 20)\n"
    "t = time.monotonic()\n"
    "with open(path, 'wb') as f:\n"
    "    for _ in range(n): f.write(block)\n"
    "    f.flush(); os.fsync(f.fileno())\n"
    "w = time.monotonic() - t\n"
    "os.sync(); open('/proc/sys/vm/drop_caches', 'w').write('3')\n"
    "print('dropped', flush=True); sys.stdin.readline()\n"  # the host drops its caches too
    "t = time.monotonic()\n"
    "with open(path, 'rb') as f:\n"
    "    while f.read(1 << 20): pass\n"
    "r = time.monotonic() - t\n"
    "os.unlink(path); print(w, r)\n"
)


def drop_host_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3")


def measure(daemon: RunningDaemon, directory: str) -> tuple[float, float]:
    """(write MB/s, read MB/s)."""
    process = subprocess.Popen(
        [str(BIN / "vm-run"), "-u", "root", "-T", "io", "python3", "-c", IO, directory,
         str(MIB)],
        env=daemon.env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    line = process.stdout.readline()
    if line.strip() != b"dropped":
        process.kill()
        raise RuntimeError(f"{directory}: {line!r} {process.stderr.read()!r}")
    drop_host_caches()
    out, err = process.communicate(b"\n", timeout=600)
    if process.returncode != 0:
        raise RuntimeError(f"{directory}: {err.decode(errors='replace')}")
    write_s, read_s = (float(v) for v in out.split())
    size = MIB * (1 << 20) / 1e6
    return size / write_s, size / read_s


def main() -> None:
    console = Console()
    console.print("building or reusing the image...")
    build_default_image()
    daemon = RunningDaemon("")
    share = daemon.root / "srv" / "bench"
    share.mkdir(parents=True)
    os.chown(share, NOBODY, NOBODY)
    daemon.config_path.write_text(CONFIG.format(root=daemon.root))
    daemon.start()
    try:
        started = daemon.cli("vm-start", "io", timeout=400)
        if started.returncode != 0:
            raise RuntimeError(started.stderr.decode(errors="replace"))
        results: dict[str, list[tuple[float, float]]] = {"share": [], "overlay": []}
        for round_number in range(1, ROUNDS + 1):
            results["share"].append(measure(daemon, "/mnt/bench"))
            results["overlay"].append(measure(daemon, "/var/tmp"))
            console.print(
                f"round {round_number}/{ROUNDS}: share write {results['share'][-1][0]:.1f} / "
                f"read {results['share'][-1][1]:.1f} MB/s; overlay write "
                f"{results['overlay'][-1][0]:.1f} / read {results['overlay'][-1][1]:.1f} MB/s")
    finally:
        daemon.stop()
    rows = []
    for index, what in ((0, "write"), (1, "read")):
        rows.append(Comparison(
            f"sequential {what}, {MIB} MiB: virtiofs share vs root overlay disk",
            Sample(f"share {what}", [r[index] for r in results["share"]], "MB/s"),
            Sample(f"overlay {what}", [r[index] for r in results["overlay"]], "MB/s"),
            higher_is_better=True,
        ))
    print_comparisons("Shared folder I/O (issue 6)", rows, console)


if __name__ == "__main__":
    main()
