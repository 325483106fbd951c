"""Wayland path (issue 10): frames per second of a Wayland program through waypipe and
vmsilo's filter vs. through waypipe alone, and the filter's CPU time per 1,000 messages.

    python -m bench.wayland

Frames: a headless Weston is the compositor; ``weston-simple-shm`` (shared-memory buffers,
drawing as fast as frame callbacks come) runs under waypipe's server half, whose client half
connects either straight to Weston (baseline) or to the filter. Both halves run on this host:
in a VM under emulation the guest's own drawing is the bottleneck and would hide the filter's
cost. Frames are counted from the program's own protocol log (``WAYLAND_DEBUG=client``, the
same overhead in both arms). Rounds alternate the arms.

CPU: a frame's worth of real traffic (attach, damage, frame callback, commit; the callback's
done, delete_id, buffer release) fed through a session many times, against only splitting the
same bytes into messages (the least any proxy does).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console

from bench.common import Comparison, Sample, print_comparisons
from vmsilo.testing.wayland import event, prepared_session, request
from vmsilo.wayland.filter import Filter
from vmsilo.wayland.protocols import load_tables
from vmsilo.wayland.wire import NewId, split_header

ROUNDS = 5
SECONDS = 5
FRAMES_FOR_CPU = 20000


def _start_weston(runtime: Path) -> subprocess.Popen[bytes]:
    weston = subprocess.Popen(
        ["weston", "--backend=headless-backend.so", "--socket=wayland-1", "--idle-time=0",
         "--no-config"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={"PATH": "/usr/bin:/bin", "XDG_RUNTIME_DIR": str(runtime)})
    while not (runtime / "wayland-1").exists():
        time.sleep(0.05)
    return weston


def _frames(runtime: Path, display: Path, tag: str) -> float:
    """Frames per second of weston-simple-shm under waypipe, whose client half uses
    ``display``."""
    link = runtime / f"waypipe-{tag}.sock"
    guest = runtime / f"guest-{tag}"
    guest.mkdir(mode=0o700, exist_ok=True)
    client = subprocess.Popen(
        ["waypipe", "--no-gpu", "--socket", str(link), "client"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={"PATH": "/usr/bin:/bin", "XDG_RUNTIME_DIR": str(runtime),
             "WAYLAND_DISPLAY": str(display)})
    while not link.exists():
        time.sleep(0.02)
    log = runtime / f"client-{tag}.log"
    try:
        with open(log, "wb") as log_file:
            subprocess.run(
                ["waypipe", "--no-gpu", "--socket", str(link), "server", "--",
                 "timeout", str(SECONDS), "weston-simple-shm"],
                stdout=subprocess.DEVNULL, stderr=log_file, check=False,
                env={"PATH": "/usr/bin:/bin", "XDG_RUNTIME_DIR": str(guest),
                     "WAYLAND_DEBUG": "client"})
    finally:
        client.terminate()
        client.wait()
        link.unlink(missing_ok=True)
    commits = sum(1 for line in log.read_text(errors="replace").splitlines()
                  if "-> wl_surface@" in line and ".commit()" in line)
    return commits / SECONDS


def frames() -> tuple[list[float], list[float]]:
    with tempfile.TemporaryDirectory() as tmp_name:
        runtime = Path(tmp_name)
        runtime.chmod(0o700)
        weston = _start_weston(runtime)
        compositor = runtime / "wayland-1"

        def upstream() -> socket.socket:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(compositor))
            return sock

        wayland_filter = Filter("bench", load_tables(), runtime / "filter.sock", upstream)
        wayland_filter.listen()
        threading.Thread(target=wayland_filter.serve_forever, daemon=True).start()
        try:
            filtered, direct = [], []
            for _ in range(ROUNDS):
                direct.append(_frames(runtime, compositor, "direct"))
                filtered.append(_frames(runtime, runtime / "filter.sock", "filtered"))
            return filtered, direct
        finally:
            wayland_filter.close()
            weston.terminate()
            weston.wait()


def cpu_per_thousand() -> tuple[list[float], list[float]]:
    tables = load_tables()
    client = b"".join([
        request(tables, 5, "wl_surface", "attach", 0, 0, 0),
        request(tables, 5, "wl_surface", "damage_buffer", 0, 0, 250, 250),
        request(tables, 5, "wl_surface", "frame", NewId(8)),
        request(tables, 5, "wl_surface", "commit"),
    ])
    server = b"".join([
        event(tables, 8, "wl_callback", "done", 1234),
        event(tables, 1, "wl_display", "delete_id", 8),
    ])
    per_frame = 6
    filtered, framing = [], []
    for _ in range(ROUNDS):
        session = prepared_session("bench", tables)
        start = time.process_time()
        for _ in range(FRAMES_FOR_CPU):
            session.from_client(client, [])
            session.from_server(server, [])
        filtered.append((time.process_time() - start) * 1e6
                        / (FRAMES_FOR_CPU * per_frame / 1000))
        start = time.process_time()
        for _ in range(FRAMES_FOR_CPU):
            for data in (client, server):
                pos = 0
                while pos < len(data):
                    pos += split_header(data, pos)[2]
        framing.append((time.process_time() - start) * 1e6
                       / (FRAMES_FOR_CPU * per_frame / 1000))
    return filtered, framing


def main() -> None:
    console = Console()
    if shutil.which("weston") is None or shutil.which("waypipe") is None:
        console.print("weston and waypipe are needed (scripts/bootstrap.sh installs them)")
        raise SystemExit(1)
    filtered_fps, direct_fps = frames()
    filtered_cpu, framing_cpu = cpu_per_thousand()
    print_comparisons("Wayland path (issue 10)", [
        Comparison(f"frames per second of weston-simple-shm, {SECONDS} s rounds: waypipe + "
                   "filter vs waypipe alone",
                   Sample("through the filter", filtered_fps, "fps"),
                   Sample("waypipe alone", direct_fps, "fps"), higher_is_better=True),
        Comparison("CPU per 1,000 messages (frame traffic): the filter's session vs only "
                   "splitting the bytes into messages",
                   Sample("filter", filtered_cpu, "µs"), Sample("framing only", framing_cpu,
                                                               "µs")),
    ], console)


if __name__ == "__main__":
    main()
