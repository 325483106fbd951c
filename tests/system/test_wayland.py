"""Guest windows on a host compositor: a headless Weston (Debian's, run as the desktop user
with its protocol log on) stands for the desktop. A Wayland program started in the VM with
vm-run reaches it through waypipe, port 5003 and vmsilo's filter; the compositor's own log shows
the window arrive marked with the VM, and a guest client that asks for a global the filter hides
is cut off. The host half runs in one sandbox as `nobody` that sees the compositor and not
the user's files; taken over and sending garbage on its broker, it is cut off, and the VM's
other ports work on."""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import RunningDaemon
from tests.support.images import build_image_for
from tests.support.sandboxed import broker_fd, outside_the_runtime, probe, sandboxed_pids, status

pytestmark = pytest.mark.skipif(
    shutil.which("weston") is None or shutil.which("waypipe") is None,
    reason="weston and waypipe are needed")

NOBODY = 65534

CONFIG = """
enable = true
user = "nobody"

[vms.painter]
memory = 1024
cpus = 1
color = "#2ecc71"
sharedHome = false
guestPrograms = ["weston", "wayland-utils"]
sound.playback = false
rootOverlay.type = "tmpfs"
"""

# A raw Wayland client in the guest: lists the globals it is offered, then binds global
# number NAME as INTERFACE, and reports whether the connection survived a round trip.
BIND_HIDDEN = r"""
import os, socket, struct, sys
name, interface = int(sys.argv[1]), sys.argv[2].encode() + b"\0"
s = socket.socket(socket.AF_UNIX)
s.connect(os.path.join(os.environ["XDG_RUNTIME_DIR"], os.environ["WAYLAND_DISPLAY"]))
def msg(obj, op, body):
    s.sendall(struct.pack("=II", obj, (8 + len(body)) << 16 | op) + body)
def string(b):
    return struct.pack("=I", len(b)) + b + b"\0" * (-len(b) % 4)
msg(1, 1, struct.pack("=I", 2))      # wl_display.get_registry -> 2
msg(1, 0, struct.pack("=I", 3))      # wl_display.sync -> 3
msg(2, 0, struct.pack("=I", name) + string(interface) + struct.pack("=II", 1, 4))  # bind
msg(1, 0, struct.pack("=I", 5))      # sync again: answered only if the bind was accepted
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        print("closed")
        break
    data += chunk
    if struct.pack("=II", 5, 12 << 16 | 0) in data:
        print("answered")
        break
"""


@pytest.fixture(scope="module")
def desktop(test_image: None) -> Iterator[tuple[RunningDaemon, Path]]:
    build_image_for(CONFIG, "painter")
    daemon = RunningDaemon(CONFIG)
    runtime = daemon.root / "desktop"
    runtime.mkdir(mode=0o700)
    os.chown(runtime, NOBODY, NOBODY)
    log = daemon.root / "weston-protocol.log"
    as_nobody = {"user": NOBODY, "group": NOBODY, "extra_groups": []}
    with open(log, "wb") as log_file:
        weston = subprocess.Popen(
            ["weston", "--backend=headless-backend.so", "--socket=wayland-1", "--idle-time=0",
             "--no-config"],
            stdout=subprocess.DEVNULL, stderr=log_file, cwd="/",
            env={"PATH": "/usr/bin:/bin", "XDG_RUNTIME_DIR": str(runtime),
                 "WAYLAND_DEBUG": "server"}, **as_nobody)
    try:
        for _ in range(200):
            if (runtime / "wayland-1").exists():
                break
            time.sleep(0.05)
        # The host half runs with vmsilod's own interpreter (the suite's, below /root), which
        # its sandbox shows it read-only.
        daemon.extra_env.update({"VMSILO_HOST_WAYLAND_DISPLAY": str(runtime / "wayland-1")})
        daemon.start()
        yield daemon, log
    finally:
        daemon.stop()
        weston.send_signal(signal.SIGTERM)
        try:
            weston.wait(10)
        except subprocess.TimeoutExpired:
            weston.kill()
            weston.wait()


def _wayland_log(daemon: RunningDaemon) -> str:
    path = daemon.root / "state" / "logs" / "painter" / "wayland.log"
    return path.read_text() if path.exists() else "no wayland log"


def test_a_guest_window_arrives_marked_with_its_vm(desktop: tuple[RunningDaemon, Path]) -> None:
    daemon, log = desktop
    result = daemon.cli("vm-run", "painter", "timeout", "30", "weston-simple-shm", timeout=300)
    # weston-simple-shm draws until timeout stops it (124); any other status is a failure.
    assert result.returncode == 124, (result.stdout + result.stderr).decode() + _wayland_log(
        daemon)
    protocol = log.read_text(errors="replace")
    titles = [line for line in protocol.splitlines() if ".set_title(" in line]
    assert any('set_title("[painter] simple-shm")' in line for line in titles), titles
    assert not any('set_title("simple-shm")' in line for line in titles), titles
    app_ids = [line for line in protocol.splitlines() if ".set_app_id(" in line]
    assert any('"vmsilo-painter-org.freedesktop.weston.simple-shm"' in line
               for line in app_ids), app_ids
    frames = sum(1 for line in protocol.splitlines()
                 if "wl_surface@" in line and ".commit()" in line)
    assert frames > 10, "the program drew no frames on the host"
    # The compositor's view of the session, kept for whoever reads the test's results.
    artifacts = Path(os.environ.get("VMSILO_ARTIFACTS", tempfile.gettempdir()))
    shutil.copy(log, artifacts / "vmsilo-wayland-protocol.log")
    assert "no security-context protocol" in _wayland_log(daemon)


def test_hidden_globals_are_not_offered(desktop: tuple[RunningDaemon, Path]) -> None:
    daemon, _ = desktop
    result = daemon.cli("vm-run", "painter", "wayland-info", timeout=240)
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode() + _wayland_log(daemon)
    offered = {line.split("'")[1] for line in out.splitlines() if line.startswith("interface:")}
    assert {"wl_compositor", "wl_shm", "xdg_wm_base", "wl_output"} <= offered, offered
    # Weston offers these to its own clients; a VM must not get them.
    assert not offered & {"weston_screenshooter", "weston_desktop_shell", "zwp_input_panel_v1",
                          "zwp_input_timestamps_manager_v1"}, offered


def test_binding_a_hidden_global_cuts_the_client_off(
    desktop: tuple[RunningDaemon, Path],
) -> None:
    daemon, log = desktop
    # Weston numbers its globals in order; its screenshooter is one the VM never saw. Binding
    # it anyway must end the connection, not reach the compositor.
    names = [line for line in log.read_text(errors="replace").splitlines()
             if 'wl_registry@2.global(' in line and "weston_screenshooter" in line]
    number = int(names[0].split("global(")[1].split(",")[0]) if names else 17
    result = daemon.cli("vm-run", "painter", "python3", "-c", BIND_HIDDEN, str(number),
                        "weston_screenshooter", timeout=240)
    assert result.stdout.decode().strip() == "closed", result.stderr.decode()
    assert "which was not offered" in _wayland_log(daemon)
    # and the compositor never heard the request
    assert "weston_screenshooter" not in "".join(
        line for line in log.read_text(errors="replace").splitlines() if ".bind(" in line)


MODULE = "vmsilo.wayland.host_main"


def test_the_host_half_is_jailed_and_sees_no_home(desktop: tuple[RunningDaemon, Path]) -> None:
    daemon, log = desktop
    (pid,) = sandboxed_pids(MODULE, "painter")
    fields = status(pid)
    assert fields["Uid"].split() == [str(NOBODY)] * 4 and fields["Groups"] == ""
    assert fields["NoNewPrivs"] == "1" and int(fields["CapEff"], 16) == 0
    hidden = [log, daemon.root / "desktop", daemon.root / "run", Path("/home"),
              *outside_the_runtime(Path("/root"))]
    script = "; ".join(f"test -e '{path}' && echo 'visible: {path}'" for path in hidden)
    result = probe(pid, NOBODY, NOBODY, script + "; ls -A /run/desktop; true")
    assert result.stdout.splitlines() == ["wayland"], result.stdout + result.stderr
    # Nothing is made for it in the VM's runtime directory.
    assert not (daemon.root / "run" / "painter" / "wayland").exists()


def test_a_helper_sending_garbage_is_cut_off(desktop: tuple[RunningDaemon, Path]) -> None:
    daemon, _ = desktop
    (pid,) = sandboxed_pids(MODULE, "painter")
    sock = socket.socket(fileno=broker_fd(pid))
    sock.send(b"GIVE ME ROOT")
    sock.settimeout(30)
    assert sock.recv(4096) == b"", "the broker answered"
    sock.close()
    assert ("VM painter: the Wayland helper broke its broker's rules (a request is 8 bytes, "
            "not 12)") in daemon.log_path.read_text()
    for _ in range(100):  # without its broker the host half ends
        if not sandboxed_pids(MODULE, "painter"):
            break
        time.sleep(0.1)
    assert not sandboxed_pids(MODULE, "painter")
    result = daemon.cli("vm-run", "painter", "echo", "still here", timeout=120)
    assert result.returncode == 0 and result.stdout == b"still here\n", result.stderr
