"""VMs for the benchmarks: the test image booted directly (no vmsilod), and what runs in it.

``DirectVm`` starts a VM the way vmsilod's start stages do — the launch spec from the real
planner (``vmsilo.daemon.plan.launch_spec``) for the default ``demo`` VM, the same runtime
directory and blank overlay, ``QemuBackend.launch`` jailed as the VM's own uid — but owned by
the benchmark, so that it can time each step and open its own ``SerialMuxTransport`` to the
guest. ``busybox_initramfs`` builds the baseline initramfs (the image's own busybox, an
``/init`` that prints a marker and powers off) with our cpio writer. ``GUEST_SERVICES`` is a
small echo and source service started in the guest through exec, for raw channel baselines.
Nothing here is used by vmsilo itself; it needs root (image build, QEMU as another user).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import os
import pwd
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.support.images import build_default_image

from vmsilo.channel.exec_client import ExecClient
from vmsilo.channel.stream import ChannelError, Stream, StreamRefusedError
from vmsilo.channel.transports import SerialMuxTransport
from vmsilo.config import parse_config, resolve
from vmsilo.daemon import resources
from vmsilo.daemon.plan import launch_spec
from vmsilo.host import ids
from vmsilo.host.paths import Mode, Paths
from vmsilo.host.safefs import Dir
from vmsilo.hypervisor.base import VmmProcess
from vmsilo.hypervisor.qemu import QemuBackend, VmmJail
from vmsilo.hypervisor.spec import LaunchSpec
from vmsilo.image import cpio
from vmsilo.protocol.exec import ExecRequest

VM_NAME = "demo"
VMM_USER = "nobody"  # as in the system tests: QEMU runs as the configured, unprivileged user
# The embedded default config's VM, with the user set (see src/vmsilo/config/default.toml).
DEMO_CONFIG = f"""
enable = true
user = "{VMM_USER}"

[vms.{VM_NAME}]
memory = 1024
cpus = 2
sharedHome = false
gpu = false
sound.playback = false
autoShutdown.enable = false
"""

BOOT_TIMEOUT = 300.0
# Printed by the baseline /init. Built by the shell at run time ($((...))) so that it cannot
# match the script's own text, should anything ever echo it.
BUSYBOX_MARKER = b"vmsilo-bench-busybox-42-up"
BUSYBOX_INIT = """#!/bin/busybox sh
/bin/busybox echo "vmsilo-bench-busybox-$((6 * 7))-up"
/bin/busybox poweroff -f
"""

ECHO_PORT = 7001
SOURCE_PORT = 7002
BLOB = "/dev/shm/vmsilo-bench-blob"
GUEST_SERVICES = f"""
import os, socket, threading

def serve(port, handler):
    os.makedirs("/run/vmsilo/ports", exist_ok=True)
    path = f"/run/vmsilo/ports/{{port}}.sock"
    if os.path.exists(path):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    os.chmod(path, 0o600)
    server.listen(16)
    def accept():
        while True:
            conn, _ = server.accept()
            threading.Thread(target=handler, args=(conn,), daemon=True).start()
    threading.Thread(target=accept, daemon=True).start()

def echo(conn):
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)

def source(conn):
    with conn, open("{BLOB}", "rb") as blob:
        conn.sendfile(blob)

serve({ECHO_PORT}, echo)
serve({SOURCE_PORT}, source)
threading.Event().wait()
"""


def test_image() -> Path:
    """The cached test image (built on first use, a few minutes)."""
    return build_default_image().path


def vmm_owner() -> tuple[int, int]:
    entry = pwd.getpwnam(VMM_USER)
    return entry.pw_uid, entry.pw_gid


def busybox_initramfs(image: Path, target: Path) -> Path:
    """A gzip'd cpio with only the image's busybox (taken from its initramfs) and our /init."""
    untrusted_members = cpio.read(gzip.decompress((image / "initrd.img").read_bytes()))
    busybox = next((m.data for m in untrusted_members if m.name == "bin/busybox"), None)
    if busybox is None:
        raise RuntimeError(f"{image / 'initrd.img'} has no bin/busybox")
    entries = [
        cpio.Entry.directory("bin"),
        cpio.Entry.directory("dev"),
        cpio.Entry.char_device("dev/console", 5, 1),
        cpio.Entry.file("bin/busybox", busybox, 0o755),
        cpio.Entry.file("init", BUSYBOX_INIT.encode(), 0o755),
    ]
    target.write_bytes(gzip.compress(cpio.write(entries), compresslevel=6, mtime=0))
    return target


class WorkDir:
    """A throwaway root for runtime dirs, logs and overlays, readable by the VMM's user."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="vmsilo-bench-", dir="/var/tmp"))
        self.path.chmod(0o755)

    def paths(self) -> Paths:
        return Paths.under(self.path, Mode.SYSTEM)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


SpecFactory = Callable[[], LaunchSpec]


def demo_spec(image: Path, paths: Paths, *, initrd: Path | None = None) -> LaunchSpec:
    rvm = resolve(parse_config(DEMO_CONFIG)).vms[VM_NAME]
    spec = launch_spec(rvm, image, paths)
    return spec if initrd is None else dataclasses.replace(spec, initrd=initrd)


class DirectVm:
    """One VM started and stopped by the benchmark itself. ``started`` is the
    ``time.perf_counter()`` just before QEMU was spawned."""

    def __init__(self, spec: LaunchSpec, jail: Any = None) -> None:
        self.spec = spec
        self.jail = jail if jail is not None else VmmJail(ids.vmm_id(spec.cid),
                                                          ids.vmm_id(spec.cid))
        self.runtime: Dir | None = None
        self.backend = QemuBackend()
        self.vmm: VmmProcess | None = None
        self.transport: SerialMuxTransport | None = None
        self.started = 0.0

    async def start(self) -> None:
        self.runtime = resources.acquire_runtime_dir(self.spec)
        resources.acquire_overlay(self.spec)
        with resources.open_log_dir(self.spec, None) as logs:
            console = resources.open_log(logs, "console.log", None, rotate=True)
            vmm_log = resources.open_log(logs, "vmm.log", None, rotate=True)
        self.started = time.perf_counter()
        try:
            self.vmm = await self.backend.launch(self.spec, runtime=self.runtime,
                                                 console_log=console, vmm_log=vmm_log,
                                                 jail=self.jail)
        finally:
            os.close(console)
            os.close(vmm_log)

    async def seconds_to_hello(self) -> float:
        """Wait for the agent's hello on a fresh channel connection; seconds since spawn."""
        self.transport = SerialMuxTransport(self.spec.layout.channel_socket, self.spec.name)
        await ExecClient(self.transport, self.spec.name, open_timeout=BOOT_TIMEOUT).hello()
        return time.perf_counter() - self.started

    async def seconds_to_console(self, marker: bytes) -> float:
        """Poll the console log for ``marker``; seconds since spawn."""
        deadline = self.started + BOOT_TIMEOUT
        log = self.spec.layout.console_log
        while time.perf_counter() < deadline:
            if log.exists() and marker in log.read_bytes():
                return time.perf_counter() - self.started
            if self.vmm is not None and self.vmm.exited():
                if marker in log.read_bytes():
                    return time.perf_counter() - self.started
                raise RuntimeError(f"QEMU ended without printing {marker!r}; see {log}")
            await asyncio.sleep(0.005)
        raise RuntimeError(f"no {marker!r} on the console within {BOOT_TIMEOUT} s; see {log}")

    def console_tail(self, lines: int = 2) -> str:
        try:
            text = self.spec.layout.console_log.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def client(self) -> ExecClient:
        if self.transport is None:
            raise RuntimeError("the agent has not said hello yet")
        return ExecClient(self.transport, self.spec.name, open_timeout=60.0)

    async def stop(self) -> None:
        if self.transport is not None:
            await self.transport.close()
            self.transport = None
        if self.vmm is not None:
            await self.backend.stop(self.spec, self.vmm, graceful=0.0, forced=10.0)
            self.vmm.close()
            self.vmm = None
        resources.release_overlay(self.spec)
        if self.runtime is not None:
            self.runtime.close()
            self.runtime = None
        resources.release_runtime_dir(self.spec)

    async def __aenter__(self) -> DirectVm:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()


async def run_checked(client: ExecClient, argv: list[str], *, user: str | None = None,
                      stdin: bytes | None = None) -> bytes:
    """Run a command in the guest; its stdout, or an error naming it and its stderr."""
    out, err = bytearray(), bytearray()

    async def to_out(data: bytes) -> None:
        out.extend(data)

    async def to_err(data: bytes) -> None:
        err.extend(data)

    status = await client.run(ExecRequest(argv=argv, env={}, user=user), stdin=stdin,
                              stdout=to_out, stderr=to_err)
    if status.shell_status() != 0:
        raise RuntimeError(f"guest command {argv} ended with {status.shell_status()}: "
                           f"{err.decode(errors='replace').strip()}")
    return bytes(out)


async def start_guest_services(vm: DirectVm) -> None:
    """Start the echo and source services in the guest and wait until both accept streams."""
    assert vm.transport is not None
    await run_checked(vm.client(), ["sh", "-c", "cat > /run/vmsilo-bench.py && { setsid python3 "
                                    "/run/vmsilo-bench.py </dev/null >/dev/null 2>&1 & }"],
                      user="root", stdin=GUEST_SERVICES.encode())
    for port in (ECHO_PORT, SOURCE_PORT):
        deadline = time.monotonic() + 60
        while True:
            try:
                stream = await vm.transport.open_stream(port, 10)
            except StreamRefusedError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
                continue
            await stream.close()
            break


async def open_echo(vm: DirectVm) -> Stream:
    assert vm.transport is not None
    return await vm.transport.open_stream(ECHO_PORT, 10)


async def echo_round_trip(stream: Stream) -> float:
    """Seconds for one byte to go to the guest's echo service and back."""
    start = time.perf_counter()
    await stream.write(b"x")
    reply = await stream.readexactly(1)
    elapsed = time.perf_counter() - start
    if reply != b"x":
        raise ChannelError(f"echo service answered {reply!r}")
    return elapsed
