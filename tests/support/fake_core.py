"""vmsilod's stateful core assembled for tests, without VMs: real ``VmController``s and a real
``Supervisor`` over ``vmsilo.testing.fake_vmm.FakeBackend``, with real runtime, log and state
directories below a throwaway root (system mode when the tests run as root, as vmsilod does;
user mode otherwise).

``Core`` holds the pieces a test turns: the config text (``reload`` re-reads it), the
backend's faults, the timeouts, a network and a shares stand-in (both None unless a test
sets them: the real ones need TAP devices and virtiofsd), desktop helpers, and root-owned
canary files outside vmsilo's directories that nothing may change.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmsilo.config import Resolved, ResolvedVm, parse_config, resolve
from vmsilo.daemon.plan import launch_spec
from vmsilo.daemon.supervisor import Supervisor
from vmsilo.daemon.vm import ExpectedPaths, Timeouts, VmController
from vmsilo.host.paths import Mode, Paths
from vmsilo.hypervisor.spec import LaunchSpec
from vmsilo.testing.fake_vmm import FakeBackend

ROOT = os.geteuid() == 0
MODE = Mode.SYSTEM if ROOT else Mode.USER

CONFIG = """
enable = true
user = "root"

[vms.alpha]
sharedHome = false
gpu = false
rootOverlay.size = "64M"

[vms.beta]
sharedHome = false
gpu = false
rootOverlay.size = "64M"
"""

# Fast bounds for the fake: it starts in a fraction of a second.
FAST = Timeouts(vmm_start=10, agent_hello=10, agent_poweroff=5, vmm_quit=5, cleanup=10)


class RecordingHelper:
    """A desktop helper that notes its starts and stops (``fail`` makes ``start`` raise)."""

    def __init__(self, events: list[str], label: str = "helper") -> None:
        self.events = events
        self.label = label
        self.fail: str | None = None

    def start(self, rvm: ResolvedVm) -> None:
        if self.fail:
            raise RuntimeError(self.fail)
        self.events.append(f"{self.label} start {rvm.name}")

    def stop(self, name: str) -> None:
        self.events.append(f"{self.label} stop {name}")


@dataclass
class Canary:
    """A root-owned file outside vmsilo's directories, and what it must stay."""

    path: Path
    content: bytes
    uid: int
    mode: int

    def intact(self) -> bool:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return False
        return (stat.S_ISREG(st.st_mode) and st.st_uid == self.uid
                and stat.S_IMODE(st.st_mode) == self.mode
                and self.path.read_bytes() == self.content)


@dataclass
class Core:
    base: Path
    config: str = CONFIG
    timeouts: Timeouts = FAST
    backend: FakeBackend = field(default_factory=FakeBackend)
    network: Callable[[ResolvedVm], Any] | None = None
    shares: Any = None
    helpers: list[Any] = field(default_factory=list)
    events: list[str] = field(default_factory=list)  # helper starts/stops, in order
    plan_hook: Callable[[LaunchSpec], LaunchSpec] | None = None
    log_group: int | None = None
    canaries: list[Canary] = field(default_factory=list)
    backends: list[FakeBackend] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = self.base / "root"
        self.root.mkdir(mode=0o755, exist_ok=True)
        self.paths = Paths.under(self.root, MODE)
        self.config_path = self.base / "vmsilo.toml"
        self.config_path.write_text(self.config)
        self.outside = self.base / "outside"
        self.outside.mkdir(mode=0o755, exist_ok=True)
        self.backends.append(self.backend)
        for name in ("canary", "passwd-like", "overlay-target"):
            path = self.outside / name
            path.write_bytes(f"canary {name}\n".encode())
            path.chmod(0o644)
            self.canaries.append(Canary(path, path.read_bytes(), os.geteuid(), 0o644))
        self.canary_dir = self.outside / "canary-dir"
        self.canary_dir.mkdir(mode=0o755, exist_ok=True)
        (self.canary_dir / "keep").write_text("keep\n")

    # -- the pieces vmsilod wires together (daemon/main.py) ---------------------------------

    def load(self) -> Resolved:
        self.config = self.config_path.read_text()
        return resolve(parse_config(self.config))

    def write_config(self, text: str) -> None:
        self.config_path.write_text(text)

    def plan(self, rvm: ResolvedVm) -> LaunchSpec:
        spec = launch_spec(rvm, self.paths.image_dir / "fake", self.paths)
        return self.plan_hook(spec) if self.plan_hook is not None else spec

    def expected_paths(self, name: str) -> ExpectedPaths:
        return ExpectedPaths(self.paths.vm_log_dir(name), self.paths.overlay_disk(name))

    def controller(self, rvm: ResolvedVm, backend: FakeBackend | None = None) -> VmController:
        return VmController(rvm, backend or self.backend, self.plan,
                            jail=lambda r: ("jail", r.name), log_group=self.log_group,
                            timeouts=self.timeouts, network=self.network, shares=self.shares,
                            helpers=self.helpers, expected_paths=self.expected_paths)

    def vm(self, name: str = "alpha") -> VmController:
        return self.controller(self.load().vms[name])

    def supervisor(self) -> Supervisor:
        return Supervisor(self.load(), self.controller, self.load)

    def restarted(self, name: str = "alpha") -> VmController:
        """The controller a restarted vmsilod makes: a fresh backend, nothing in memory."""
        backend = FakeBackend()
        self.backends.append(backend)
        return self.controller(self.load().vms[name], backend)

    # -- looking at what is left --------------------------------------------------------------

    def runtime_dir(self, name: str = "alpha") -> Path:
        return self.paths.vm_runtime_dir(name)

    def overlay(self, name: str = "alpha") -> Path:
        return self.paths.overlay_disk(name)

    def saved(self, name: str, file: str) -> Any:
        return json.loads((self.runtime_dir(name) / file).read_text())

    def write_saved(self, name: str, file: str, data: Any) -> None:
        """Replace a record in the runtime dir as root would (atomically, root's 0600)."""
        path = self.runtime_dir(name) / file
        new = path.with_name(f".{file}.forged")
        new.write_text(data if isinstance(data, str) else json.dumps(data))
        new.chmod(0o600)
        new.replace(path)

    def canaries_intact(self) -> list[str]:
        """The canaries that changed (empty: all intact)."""
        changed = [str(c.path) for c in self.canaries if not c.intact()]
        if (not self.canary_dir.is_dir() or self.canary_dir.is_symlink()
                or sorted(p.name for p in self.canary_dir.iterdir()) != ["keep"]
                or (self.canary_dir / "keep").read_text() != "keep\n"):
            changed.append(str(self.canary_dir))
        return changed

    def close(self) -> None:
        for backend in self.backends:
            backend.close()


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not count)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as source:
            raw = source.read()
    except OSError:
        return False
    return raw[raw.rfind(b")") + 2:][:1] not in (b"Z", b"X")


async def abandon(vm: VmController) -> int:
    """What a dying vmsilod leaves behind: its tasks and descriptors go, its VMM (in its own
    session) and its root-owned directories stay. Returns the VMM's pid."""
    assert vm.vmm is not None
    pid = vm.vmm.pid
    if vm._watcher is not None:
        vm._watcher.cancel()
        with contextlib.suppress(BaseException):
            await vm._watcher
    if vm.transport is not None:
        await vm.transport.close()
    if vm.runtime is not None:
        vm.runtime.close()
    vm.vmm.close()
    return pid


def runtime_files(core: Core, name: str = "alpha") -> list[str]:
    return sorted(os.listdir(core.runtime_dir(name)))



class SignalSpy:
    """Notes every signal the process sends (``os.kill``, ``os.killpg``, and
    ``signal.pidfd_send_signal``, by the pidfd's pid from ``/proc/self/fdinfo``) and sends it.
    Install with ``install(monkeypatch)``; ``pids`` are the targets, in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int, int]] = []

    @property
    def pids(self) -> list[int]:
        return [pid for _, pid, _ in self.sent]

    def install(self, monkeypatch: Any) -> SignalSpy:
        import signal as signals

        real_kill, real_killpg = os.kill, os.killpg
        real_pidfd = signals.pidfd_send_signal

        def kill(pid: int, sig: int) -> None:
            self.sent.append(("kill", pid, sig))
            real_kill(pid, sig)

        def killpg(pgid: int, sig: int) -> None:
            self.sent.append(("killpg", pgid, sig))
            real_killpg(pgid, sig)

        def pidfd_send_signal(fd: int, sig: int, *args: Any) -> None:
            self.sent.append(("pidfd", _pidfd_pid(fd), sig))
            real_pidfd(fd, sig, *args)

        monkeypatch.setattr(os, "kill", kill)
        monkeypatch.setattr(os, "killpg", killpg)
        monkeypatch.setattr(signals, "pidfd_send_signal", pidfd_send_signal)
        return self


def _pidfd_pid(fd: int) -> int:
    try:
        for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
            if line.startswith("Pid:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return -1
