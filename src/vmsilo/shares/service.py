"""vmsilod's shared-folder service: checks a VM's shares against the installed virtiofsd when
the VM is planned (so an option it cannot honour, or an id map that would give a guest
privileged host ids, stops the start before anything runs), says what the launch spec and
the guest need, and starts, adopts and stops the virtiofsd processes.
"""

from __future__ import annotations

import logging
import os
import pwd
from collections.abc import Callable
from pathlib import Path

from vmsilo.config import ResolvedVm
from vmsilo.errors import UserError
from vmsilo.host.paths import Mode, Paths
from vmsilo.host.safefs import Dir
from vmsilo.hypervisor.spec import FsShare, LaunchSpec
from vmsilo.protocol.shareparams import GuestShare, GuestShares
from vmsilo.shares import runner, virtiofsd
from vmsilo.shares.idmap import IdMapError, IdOptions, namespace_map
from vmsilo.shares.plan import Share, shares_for
from vmsilo.shares.virtiofsd import INSTALL_RUST, Virtiofsd

log = logging.getLogger(__name__)

# (log file name) -> a descriptor open for appending, which the callee closes.
OpenLog = Callable[[str], int]


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
        """The configured user's uid and gid: the shared home's owner, and the host ids of
        the guest's ``user``."""
        entry = pwd.getpwnam(self.user)
        return entry.pw_uid, entry.pw_gid

    def id_maps(self, rvm: ResolvedVm, share: Share, found: Virtiofsd) -> runner.IdMaps:
        """virtiofsd's namespace maps for ``share``; ``IdMapError`` names a bad option."""
        uid, gid = self.owner()
        o = share.options
        return runner.IdMaps(
            uids=namespace_map(rvm.cid, uid, IdOptions(o.uid_map, o.translate_uid),
                               found.flavour),
            gids=namespace_map(rvm.cid, gid,
                               IdOptions(o.gid_map, o.translate_gid, "gidMap", "translateGid"),
                               found.flavour),
        )  # fmt: skip

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
        uid, gid = self.owner()
        if 0 in (uid, gid):
            raise UserError(
                f"VM {rvm.name} shares folders, and the guest's user would be host root there "
                f"(user = {self.user!r} has uid {uid}, gid {gid}): set user to the desktop "
                f"account (not root), or set vms.{rvm.name}.sharedHome = false and remove its "
                "sharedDirectories")
        found = self.virtiofsd()
        if found is None:
            raise UserError(
                f"VM {rvm.name} shares folders but no virtiofsd is installed; "
                f"{INSTALL_RUST}, or QEMU's (package qemu-system-x86 on Debian 12)"
            )
        problems = []
        for share in shares:
            lacking = virtiofsd.unsupported(share.options, rvm.vm.virtiofs, found.flavour)
            for option, value, why in lacking:
                where = (
                    f"vms.{rvm.name}.{option}"
                    if option.startswith("virtiofs.")
                    else f"{share.option_path}.{option}"
                )
                problems.append(
                    f"{where} = {value}: the installed virtiofsd ({found.path}, "
                    f"{found.flavour} flavour {found.version}) runs in a user namespace; {why}"
                )
            try:
                self.id_maps(rvm, share, found)
            except IdMapError as exc:
                if exc.option not in {option for option, _, _ in lacking}:  # said already
                    problems.append(f"{share.option_path}.{exc}")
        if problems:
            raise UserError("; ".join(dict.fromkeys(problems)))
        return shares

    def launch_parts(
        self, rvm: ResolvedVm, runtime_dir: Path
    ) -> tuple[tuple[FsShare, ...], tuple[str, ...]]:
        """The launch spec's shares and the guest's words for them. The guest's ``user``
        keeps its ids (1000): the namespace map makes them the desktop user's on the host."""
        shares = self.check(rvm)
        if not shares:
            return (), ()
        specs = tuple(
            FsShare(s.tag, runner.share_directory(runtime_dir, s.tag) / runner.SOCKET)
            for s in shares
        )
        words = GuestShares(
            shares=[GuestShare(s.tag, s.mount_point, s.readonly) for s in shares]
        ).encode()
        return specs, tuple(words)

    def start_all(
        self, rvm: ResolvedVm, spec: LaunchSpec, runtime: Dir, open_log: OpenLog
    ) -> list[runner.RunningShare]:
        """Start every share's virtiofsd (the home created from the template first), each
        in ``runtime``'s ``virtiofs-<tag>/``, its output in ``open_log("virtiofsd-<tag>.log")``
        (closed here once virtiofsd has it). On a failure the ones started are stopped
        again."""
        # The plan stage already checked these shares against the found virtiofsd.
        shares = shares_for(rvm, self.paths)
        found = self.virtiofsd()
        assert found is not None
        running: list[runner.RunningShare] = []
        try:
            for share in shares:
                if share.is_home and share.source.parent == self.paths.shared_root:
                    runner.secure_shared_root(self.paths.shared_root, self.owner()[1])
                if share.is_home and runner.ensure_home(
                    share, self.paths.home_template, self.owner()
                ):
                    log.info(
                        "VM %s: created its home %s from %s",
                        rvm.name,
                        share.source,
                        self.paths.home_template,
                    )
                name = f"virtiofsd-{share.tag}.log"
                log_fd = None if share.options.log_level == "off" else open_log(name)
                maps = self.id_maps(rvm, share, found)
                try:
                    running.append(runner.start(found, share, rvm.vm.virtiofs, maps, runtime,
                                                log_fd, spec.layout.log_dir / name))
                finally:
                    if log_fd is not None:
                        os.close(log_fd)
        except BaseException:
            self.stop_all(running)
            raise
        return running

    @staticmethod
    def stop_all(running: list[runner.RunningShare]) -> None:
        for share in reversed(running):
            runner.stop(share)

    @staticmethod
    def adopt_all(spec: LaunchSpec, runtime: Dir) -> list[runner.RunningShare]:
        """The virtiofsd processes a previous vmsilod started for ``spec``'s shares that
        still run (checked by their recorded identity)."""
        adopted = [runner.adopt(runtime, share.tag) for share in spec.shares]
        return [share for share in adopted if share is not None]
