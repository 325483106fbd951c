"""vmsilod's shared-folder service: checks a VM's shares against the installed virtiofsd when
the VM is planned (so an option it cannot honour stops the start before anything runs), says
what the launch spec and the guest need, and starts and stops the virtiofsd processes.
"""

from __future__ import annotations

import logging
import pwd
from pathlib import Path

from vmsilo.config import ResolvedVm
from vmsilo.errors import UserError
from vmsilo.host.paths import Mode, Paths
from vmsilo.hypervisor.spec import FsShare, LaunchSpec
from vmsilo.protocol.shareparams import GuestShare, GuestShares
from vmsilo.shares import runner, virtiofsd
from vmsilo.shares.plan import Share, shares_for
from vmsilo.shares.virtiofsd import INSTALL_RUST, Virtiofsd

log = logging.getLogger(__name__)


class ShareService:
    def __init__(self, paths: Paths, user: str) -> None:
        self.paths = paths
        self.user = user
        self._found: Virtiofsd | None = None

    def virtiofsd(self) -> Virtiofsd | None:
        if self._found is None:
            self._found = virtiofsd.find()
            if self._found is not None:
                log.info(
                    "virtiofsd: %s (%s flavour, %s)",
                    self._found.path,
                    self._found.flavour,
                    self._found.version,
                )
        return self._found

    def owner(self) -> tuple[int, int]:
        """The configured user's uid and gid: the shared home's owner and the guest user's."""
        entry = pwd.getpwnam(self.user)
        return entry.pw_uid, entry.pw_gid

    def check(self, rvm: ResolvedVm) -> list[Share]:
        """The VM's shares, or a UserError naming what cannot be served here and the fix."""
        shares = shares_for(rvm, self.paths)
        if not shares:
            return []
        if self.paths.mode is Mode.USER:
            raise UserError(
                f"VM {rvm.name} shares folders ({', '.join(s.option_path for s in shares)}), "
                "which needs vmsilod in system mode (root) to run virtiofsd; run vmsilod as "
                f"root, or set vms.{rvm.name}.sharedHome = false and remove its "
                "sharedDirectories"
            )
        found = self.virtiofsd()
        if found is None:
            raise UserError(
                f"VM {rvm.name} shares folders but no virtiofsd is installed; "
                f"{INSTALL_RUST}, or QEMU's (package qemu-system-x86 on Debian 12)"
            )
        problems = []
        for share in shares:
            for option, value in virtiofsd.unsupported(
                share.options, rvm.vm.virtiofs, found.flavour
            ):
                where = (
                    f"vms.{rvm.name}.{option}"
                    if option.startswith("virtiofs.")
                    else f"{share.option_path}.{option}"
                )
                problems.append(
                    f"{where} = {value}: the installed virtiofsd ({found.path}, "
                    f"QEMU's C virtiofsd {found.version}) cannot honour it; "
                    f"{INSTALL_RUST}, or remove the option"
                )
        if problems:
            raise UserError("; ".join(dict.fromkeys(problems)))
        return shares

    def launch_parts(
        self, rvm: ResolvedVm, runtime_dir: Path
    ) -> tuple[tuple[FsShare, ...], tuple[str, ...]]:
        """The launch spec's shares and the guest's words for them."""
        shares = self.check(rvm)
        if not shares:
            return (), ()
        uid, gid = self.owner()
        specs = tuple(
            FsShare(s.tag, runner.share_directory(runtime_dir, s.tag) / "socket") for s in shares
        )
        words = GuestShares(
            shares=[GuestShare(s.tag, s.mount_point, s.readonly) for s in shares],
            uid=uid,
            gid=gid,
        ).encode()
        return specs, tuple(words)

    def start_all(
        self, rvm: ResolvedVm, spec: LaunchSpec, vmm_owner: tuple[int, int] | None
    ) -> list[runner.RunningShare]:
        """Start every share's virtiofsd (the home created from the template first); on a
        failure the ones started are stopped again."""
        # The plan stage already checked these shares against the found virtiofsd.
        shares = shares_for(rvm, self.paths)
        found = self.virtiofsd()
        running: list[runner.RunningShare] = []
        try:
            for share in shares:
                if share.is_home and runner.ensure_home(
                    share, self.paths.home_template, self.owner()
                ):
                    log.info(
                        "VM %s: created its home %s from %s",
                        rvm.name,
                        share.source,
                        self.paths.home_template,
                    )
                assert found is not None
                running.append(
                    runner.start(
                        found,
                        share,
                        rvm.vm.virtiofs,
                        spec.layout.runtime_dir,
                        spec.layout.log_dir / f"virtiofsd-{share.tag}.log",
                        vmm_owner,
                    )
                )
        except BaseException:
            self.stop_all(running)
            raise
        return running

    @staticmethod
    def stop_all(running: list[runner.RunningShare]) -> None:
        for share in reversed(running):
            runner.stop(share)

    @staticmethod
    def adopt_all(spec: LaunchSpec) -> list[runner.RunningShare]:
        adopted = [runner.adopt(spec.layout.runtime_dir, share.tag) for share in spec.shares]
        return [share for share in adopted if share is not None]
