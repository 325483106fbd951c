"""vmsilod's process: wire config, backend, supervisor and control socket together, re-adopt
running VMs, autoStart, then serve until told to exit.

SIGHUP reloads the config. SIGTERM and SIGINT end the daemon but leave VMs running: their
VMMs live in their own sessions, and the next vmsilod re-adopts them (stop them first with
``vm-stop --all`` if that is what you want). Under systemd (``NOTIFY_SOCKET`` set) readiness is
reported once the control socket accepts connections.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import signal
import sys
from pathlib import Path

from vmsilo import systemd
from vmsilo.channel.stream import Stream
from vmsilo.config import Resolved, ResolvedVm, load_config, resolve
from vmsilo.daemon import balloond, resources
from vmsilo.daemon.dbusproxy import ProxyLauncher
from vmsilo.daemon.plan import launch_spec
from vmsilo.daemon.resources import RUN_ROOT_MODE
from vmsilo.daemon.server import ControlServer
from vmsilo.daemon.supervisor import Supervisor
from vmsilo.daemon.vm import ExpectedPaths, Timeouts, VmController
from vmsilo.daemon.wayland import WaylandLauncher
from vmsilo.desktop.menu import refresh_quietly
from vmsilo.errors import UserError
from vmsilo.host import ids, schedcore
from vmsilo.host.paths import Mode, Paths
from vmsilo.host.safefs import Dir
from vmsilo.hypervisor.base import Backend
from vmsilo.hypervisor.qemu import QemuBackend, VmmJail
from vmsilo.hypervisor.spec import LaunchSpec
from vmsilo.image import manifest
from vmsilo.image.spec import agent_digest, spec_for_vm
from vmsilo.network.guest import guest_params
from vmsilo.network.plan import NetworkPlan, plan_vm
from vmsilo.shares.service import ShareService

log = logging.getLogger("vmsilod")


def image_dir_for(name: str, rvm: ResolvedVm, paths: Paths, suite: str, mirror: str,
                  agent: str) -> Path:
    spec = spec_for_vm(name, rvm.vm, suite=suite, mirror=mirror, agent=agent)
    image = paths.image(spec.digest())
    if manifest.read(image) is None:
        raise UserError(f"VM {name}: its image is not built; build it with: "
                        f"vmsilo image build {name}")
    return image


class Daemon:
    def __init__(self, config_path: Path | None, paths: Paths,
                 timeouts: Timeouts | None = None) -> None:
        self.config_path = config_path
        self.paths = paths
        self.timeouts = timeouts or Timeouts()
        loaded = load_config(config_path)
        if loaded.is_default:
            print("vmsilod: no config file; using the embedded default (one offline VM "
                  "'demo')", file=sys.stderr)
        self.config = loaded.config
        if not self.config.enable:
            raise UserError("the config has enable = false, so vmsilod manages no VM; set "
                            "enable = true")
        self.owner: tuple[int, int] | None = None
        self.allowed_uids = {0, os.getuid()}
        self.group: int | None = None
        if paths.mode is Mode.SYSTEM:
            try:
                entry = pwd.getpwnam(self.config.user)
            except KeyError:
                raise UserError(f"user: no user named {self.config.user!r} on this host; set "
                                "user to the account that runs the desktop session") from None
            self.allowed_uids.add(entry.pw_uid)
            self.group = entry.pw_gid
            if entry.pw_uid != 0:
                self.owner = (entry.pw_uid, entry.pw_gid)
        self.backends: dict[str, Backend] = {"qemu": QemuBackend()}
        self._said_no_core_scheduling = False
        # Helpers get streams to their own VM's port through a broker, never the control
        # socket; the supervisor (made below) opens them.
        self.dbus_proxies = ProxyLauncher(paths, self.owner, self._open_port, self._helper_log)
        self.wayland = WaylandLauncher(paths, self.owner, self._open_port, self._helper_log)
        self.shares = ShareService(paths, self.config.user if paths.mode is Mode.SYSTEM
                                   else pwd.getpwuid(os.getuid()).pw_name)
        self.resolved = resolve(self.config)
        if paths.mode is Mode.SYSTEM:
            check_id_blocks(self.resolved)
        self.supervisor = Supervisor(self.resolved, self._controller, self._reload)
        self.server = ControlServer(self.supervisor, paths.control_socket, self.allowed_uids,
                                    self.group)

    async def _open_port(self, name: str, port: int, start: bool,
                         timeout: float | None) -> Stream:
        return await self.supervisor.open_port(name, port, start, timeout)

    def _reload(self) -> Resolved:
        loaded = load_config(self.config_path)
        self.config = loaded.config
        resolved = resolve(loaded.config)
        if self.paths.mode is Mode.SYSTEM:
            check_id_blocks(resolved)
        self.resolved = resolved
        self._refresh_menu()
        return self.resolved

    def _refresh_menu(self) -> None:
        """The desktop menu follows the config and the built images (system mode only: a
        user-mode vmsilod's user runs ``vmsilo desktop install`` as they like)."""
        if self.paths.mode is Mode.SYSTEM:
            log.info("%s", refresh_quietly(self.config))

    def _plan(self, rvm: ResolvedVm) -> LaunchSpec:
        vm = rvm.vm
        if vm.hypervisor not in self.backends:
            raise UserError(f"vms.{rvm.name}.hypervisor: {vm.hypervisor} VMs cannot be started "
                            'by this version yet; use hypervisor = "qemu"')
        if self.paths.mode is Mode.USER:
            needs_root = [f"network interface {name!r}" for name in rvm.interfaces]
            needs_root += [f"PCI device {dev.path}" for dev in vm.pci_devices]
            if needs_root:
                raise UserError(
                    f"VM {rvm.name} needs root for its {', '.join(needs_root)}; vmsilod runs "
                    "in user mode (not as root), which gives VMs no TAP networking and no PCI "
                    "devices: run vmsilod as root, or remove them from the VM")
        image = None
        if vm.kernel is None or vm.root_disk is None:
            image = image_dir_for(rvm.name, rvm, self.paths, self.config.image.suite,
                                  self.config.image.mirror, agent_digest())
        fs_shares, share_words = self.shares.launch_parts(rvm, self.paths.vm_runtime_dir(rvm.name))
        return launch_spec(rvm, image, self.paths, guest_network=tuple(self._guest_params(rvm)),
                           shares=fs_shares, guest_shares=share_words)

    def _with_vm(self, rvm: ResolvedVm) -> Resolved:
        """The VM as it starts (its controller's config) among the daemon's view of the
        others (vm-switch peers, netvm links)."""
        return Resolved(self.resolved.config, {**self.resolved.vms, rvm.name: rvm},
                        self.resolved.links)

    def _guest_params(self, rvm: ResolvedVm) -> list[str]:
        return guest_params(self._with_vm(rvm), rvm.name)

    def _network_plan(self, rvm: ResolvedVm) -> NetworkPlan:
        return plan_vm(self._with_vm(rvm), rvm.name)

    def _controller(self, rvm: ResolvedVm) -> VmController:
        backend = self.backends.get(rvm.vm.hypervisor, self.backends["qemu"])
        network = self._network_plan if self.paths.mode is Mode.SYSTEM else None
        return VmController(rvm, backend, self._plan, jail=self._jail,
                            log_group=self.group if self.paths.mode is Mode.SYSTEM else None,
                            timeouts=self.timeouts, network=network, shares=self.shares,
                            helpers=(self.dbus_proxies, self.wayland),
                            after_launch=self._isolate_cores,
                            expected_paths=self._expected_paths)

    def _isolate_cores(self, pid: int, rvm: ResolvedVm) -> None:
        """schedulerIsolation for the VMM's vCPU threads; where the kernel lacks core
        scheduling, said once."""
        try:
            result = schedcore.apply(pid, self.config.scheduler_isolation)
        except OSError as exc:
            log.warning("VM %s: core scheduling not set: %s", rvm.name, exc)
            return
        if result.unsupported is not None:
            if not self._said_no_core_scheduling:
                self._said_no_core_scheduling = True
                log.info("%s", result.describe())
            return
        log.info("VM %s: %s", rvm.name, result.describe())

    def _helper_log(self, vm: str, name: str) -> int:
        """A helper's output goes into a capped log of its VM (``host/logpump.py``)."""
        group = self.group if self.paths.mode is Mode.SYSTEM else None
        return resources.pumped_log(self.paths.vm_log_dir(vm), name, group)

    def _jail(self, rvm: ResolvedVm) -> VmmJail:
        """The VMM's own uid and gid (``host/ids.py``); in user mode, vmsilod's user."""
        if self.paths.mode is Mode.USER:
            return VmmJail(None, None)
        return VmmJail(ids.vmm_id(rvm.cid), ids.vmm_id(rvm.cid), desktop=self.owner)

    def _expected_paths(self, name: str) -> ExpectedPaths:
        return ExpectedPaths(self.paths.vm_log_dir(name), self.paths.overlay_disk(name))

    async def run(self, stop: asyncio.Event) -> None:
        if await _daemon_answers(self.paths.control_socket):
            raise UserError(f"vmsilod is already running (control socket "
                            f"{self.paths.control_socket})")
        # The run directory must be ours alone (in user mode without XDG_RUNTIME_DIR it is in
        # /tmp, where another user could have made it first: refused, with the fix).
        Dir.secure(self.paths.run_dir, mode=RUN_ROOT_MODE if self.paths.mode is Mode.SYSTEM
                   else 0o700).close()
        accel = getattr(self.backends["qemu"], "accel", None)
        if accel is not None:
            log.info("QEMU accelerator: %s", accel.describe())
        adopted = await self.supervisor.readopt_all(self.paths.vm_runtime_dir)
        if adopted:
            log.info("re-adopted running VMs: %s", ", ".join(adopted))
        await self.server.start()
        log.info("listening on %s (%s mode)", self.paths.control_socket, self.paths.mode.value)
        balloond.ensure_running(self.paths, self.config_path,
                                list(self.config.vmsilo_balloond.extra_args))
        self._refresh_menu()
        systemd.notify("READY=1")
        autostart = asyncio.create_task(self.supervisor.autostart())
        await stop.wait()
        autostart.cancel()
        systemd.notify("STOPPING=1")
        await self.server.close()
        await self.supervisor.shutdown()
        self.dbus_proxies.stop_all()
        self.wayland.stop_all()
        # vmsilod's end for good leaves nothing behind; VMs left running mean a restart to
        # be (the next vmsilod re-adopts them) and balloond keeps balancing them meanwhile.
        if not any(vm.vmm is not None for vm in self.supervisor.vms.values()):
            balloond.stop_for_good(self.paths)


def check_id_blocks(resolved: Resolved) -> None:
    """No host account may hold an id of a VM's block (``host/ids.py``): its VMM, or files
    its guest made in a shared folder, would be that account's."""
    clashes = ids.accounts_in_blocks([rvm.cid for rvm in resolved.vms.values()])
    if clashes:
        raise UserError(
            "host accounts use ids that vmsilo reserves for VMs: "
            + "; ".join(f"{kind} {name} ({number}) is in the block of VM id {vm_id}"
                        for kind, name, number, vm_id in clashes)
            + f"; give those accounts other ids (vmsilo uses {ids.ID_BASE:#x} + "
            f"id * {ids.BLOCK_SIZE:#x})")


async def _daemon_answers(path: Path) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 2)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


def run(config_path: Path | None, paths: Paths | None = None) -> int:
    logging.basicConfig(
        level=os.environ.get("VMSILO_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s vmsilod %(levelname)s %(name)s: %(message)s",
    )
    timeouts = Timeouts()
    if os.environ.get("VMSILO_AGENT_TIMEOUT"):  # slow hosts, and tests of a silent agent
        timeouts = Timeouts(agent_hello=float(os.environ["VMSILO_AGENT_TIMEOUT"]))
    if config_path is None and os.environ.get("VMSILO_CONFIG"):
        config_path = Path(os.environ["VMSILO_CONFIG"])
    if config_path is not None:
        config_path = Path(os.path.abspath(config_path))  # reloads read it after the chdir
    daemon = Daemon(config_path, paths or Paths.for_mode(), timeouts)
    # Root's children run Python modules (log pumps, virtiofsd's launcher, balloond), which
    # look in the working directory first: never one someone else could have written to.
    os.chdir("/")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)

        reloads: set[asyncio.Future[None]] = set()

        def reload() -> None:
            async def go() -> None:
                try:
                    pending = await daemon.supervisor.reload()
                    log.info("config reloaded; pending a restart: %s", ", ".join(pending) or "none")
                except UserError as exc:
                    log.error("reload refused, keeping the old config: %s", exc)

            reloads.add(task := asyncio.ensure_future(go()))
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, reload)
        await daemon.run(stop)

    asyncio.run(main())
    return 0
