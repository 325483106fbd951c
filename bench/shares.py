"""Sequential I/O through a shared folder (issue 6, issue 14): write and read throughput on a
virtiofs share vs. the same I/O on the guest's root overlay disk, and through virtiofsd in its
user namespace (as vmsilod runs it) vs. virtiofsd as plain root, in one run.

A real vmsilod runs one VM with two shares (the installed virtiofsd, default options) and a
disk overlay. The share ``bench`` is served as vmsilod serves every share. The share
``rootfs`` is the baseline: virtiofsd as host root, in vmsilod's old confinement only (IPC,
UTS and mount namespaces, open-file limit, bounding set), built only here — a
``sitecustomize`` on the daemon's PYTHONPATH replaces ``runner.launch_command`` for that one
tag. In the guest, a python3 loop writes 64 MiB in 1 MiB blocks and fsyncs, then, after
dropping the guest's and the host's page caches, reads it back; it reports its own timings
(``time.monotonic`` in the guest, so vm-run's overhead is not counted). One untimed pass over
each target, then 7 rounds: the two shares back to back (which one first alternates), then the
overlay. Besides the table, the per-round ratio of the two shares is printed (rounds move
together with cache drops and other load, so the ratio within a round is the steadier one).

Run as root: ``.venv/bin/python -m bench.shares``
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from rich.console import Console
from tests.support.daemon import BIN, RunningDaemon
from tests.support.images import build_default_image

from bench.common import Comparison, Sample, print_comparisons

ROUNDS = 7
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
sharedDirectories.rootfs = {{ path = "{root}/srv/rootfs" }}
"""

BASELINE_TAG = "rootfs"
# The baseline: for the one tag, virtiofsd's argv in the confinement vmsilod used before
# issue 14 (host root, no user namespace). Loaded by the daemon's interpreter at start.
SITECUSTOMIZE = f"""
import sys
if sys.argv[1:2] == ["daemon"]:
    from vmsilo.shares import runner
    _namespaced = runner.launch_command

    def launch_command(share, maps, argv, python=sys.executable, *, source_fd):
        if share.tag != {BASELINE_TAG!r}:
            return _namespaced(share, maps, argv, python, source_fd=source_fd)
        from vmsilo.shares import userns
        limit = runner.nofile_limit()
        bounding = "-all," + ",".join("+" + cap for cap in runner.CAPABILITIES)
        # The old way served the share's path itself, not the descriptor's mount.
        argv = [a.replace(userns.SOURCE, str(share.source)) for a in argv]
        return ["unshare", "--ipc", "--uts", "--mount", "--propagation", "private", "--",
                "prlimit", f"--nofile={{limit}}:{{limit}}", "--",
                "setpriv", f"--bounding-set={{bounding}}", "--", *argv]

    runner.launch_command = launch_command
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
    baseline = Path(tempfile.mkdtemp(prefix="vmsilo-bench-site-"))
    (baseline / "sitecustomize.py").write_text(SITECUSTOMIZE)
    baseline.chmod(0o755)
    daemon = RunningDaemon("", extra_env={"PYTHONPATH": str(baseline)})
    for name in ("bench", "rootfs"):
        share = daemon.root / "srv" / name
        share.mkdir(parents=True)
        os.chown(share, NOBODY, NOBODY)
    daemon.config_path.write_text(CONFIG.format(root=daemon.root))
    daemon.start()
    targets = {"share": "/mnt/bench", "root share": f"/mnt/{BASELINE_TAG}", "overlay": "/var/tmp"}
    try:
        started = daemon.cli("vm-start", "io", timeout=400)
        if started.returncode != 0:
            raise RuntimeError(started.stderr.decode(errors="replace"))
        check_baseline(daemon)
        for directory in targets.values():  # warm-up: the first pass over each is slower
            measure(daemon, directory)
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in targets}
        for round_number in range(1, ROUNDS + 1):
            # The two shares back to back, which one first alternating by round.
            pair = ["share", "root share"][:: 1 if round_number % 2 else -1]
            for name in [*pair, "overlay"]:
                results[name].append(measure(daemon, targets[name]))
            console.print(f"round {round_number}/{ROUNDS}: " + "; ".join(
                f"{name} write {r[-1][0]:.1f} / read {r[-1][1]:.1f} MB/s"
                for name, r in results.items()))
    finally:
        daemon.stop()
        shutil.rmtree(baseline, ignore_errors=True)
    rows = []
    for index, what in ((0, "write"), (1, "read")):
        rows.append(Comparison(
            f"sequential {what}, {MIB} MiB: virtiofsd in its user namespace vs as host root",
            Sample(f"namespaced {what}", [r[index] for r in results["share"]], "MB/s"),
            Sample(f"root {what}", [r[index] for r in results["root share"]], "MB/s"),
            higher_is_better=True,
        ))
    for index, what in ((0, "write"), (1, "read")):
        rows.append(Comparison(
            f"sequential {what}, {MIB} MiB: virtiofs share vs root overlay disk",
            Sample(f"share {what}", [r[index] for r in results["share"]], "MB/s"),
            Sample(f"overlay {what}", [r[index] for r in results["overlay"]], "MB/s"),
            higher_is_better=True,
        ))
    print_comparisons("Shared folder I/O (issues 6 and 14)", rows, console)
    # Cache drops and other load move whole rounds together: the ratio within each round
    # (the two shares measured back to back) is steadier than the ratio of the medians.
    for index, what in ((0, "write"), (1, "read")):
        paired = sorted(root[index] / ns[index]
                        for ns, root in zip(results["share"], results["root share"],
                                            strict=True))  # fmt: skip
        console.print(f"{what}, namespaced vs root, per round: "
                      f"{' '.join(f'{r:.2f}x' for r in paired)}; median "
                      f"{statistics.median(paired):.2f}x")


def check_baseline(daemon: RunningDaemon) -> None:
    """The two shares really differ: guest root's file is host root's through the baseline
    only."""
    block = 0x50000000 + 3 * 0x10000  # VM id 3
    for tag, owner in (("bench", block), (BASELINE_TAG, 0)):
        result = daemon.cli("vm-run", "-u", "root", "io", "touch", f"/mnt/{tag}/owner", timeout=200)
        if result.returncode != 0:
            raise RuntimeError(result.stderr.decode(errors="replace"))
        made = daemon.root / "srv" / tag / "owner"
        if made.stat().st_uid != owner:
            raise RuntimeError(f"{tag}: guest root's file is uid {made.stat().st_uid}, "
                               f"not {owner}; the baseline is not what it should be")
        made.unlink()


if __name__ == "__main__":
    main()
