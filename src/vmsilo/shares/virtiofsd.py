"""Which virtiofsd this host has, and the command line that serves one share with it.

Two flavours exist: the Rust virtiofsd (Debian package ``virtiofsd``, in ``/usr/libexec`` or
on ``PATH``) and the C one QEMU shipped until 8.0 (``/usr/lib/qemu/virtiofsd``). vmsilo uses
the Rust one when it is installed. The C one lacks some options; ``unsupported`` names each
option a share sets that the found flavour cannot honour, so the VM is refused before
anything starts instead of an option being dropped silently. Pure, apart from ``find``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vmsilo.config.model import SharedDirectory, Virtiofs
from vmsilo.host import proc

Flavour = Literal["rust", "qemu"]

# Searched in order; VMSILO_VIRTIOFSD names one explicitly.
CANDIDATES = (
    "/usr/libexec/virtiofsd",
    "/usr/lib/virtiofsd",
    "virtiofsd",
    "/usr/lib/qemu/virtiofsd",
)
INSTALL_RUST = (
    "install the Rust virtiofsd (Debian: apt install virtiofsd; on Debian 12 from "
    "bookworm-backports)"
)
# The C virtiofsd knows no "off" or "trace": the nearest levels, and "off" drops its output.
_QEMU_LOG_LEVELS = {"error": "err", "warn": "warn", "info": "info", "debug": "debug",
                    "trace": "debug", "off": "err"}  # fmt: skip
# The open-file limit vmsilod gives virtiofsd (which then leaves it alone: --rlimit-nofile=0).
RLIMIT_NOFILE = 1_048_576


@dataclass(frozen=True)
class Virtiofsd:
    path: str
    flavour: Flavour
    version: str


def _flavour_of(path: str) -> Virtiofsd | None:
    try:
        result = proc.run([path, "--version"], check=False, timeout=10)
    except proc.ProcessError:
        return None
    text = (result.stdout + result.stderr).strip()
    first = text.splitlines()[0] if text else ""
    # The C one says "virtiofsd version 7.2.x (...)"; the Rust one "virtiofsd 1.x.y".
    if first.startswith("virtiofsd version"):
        return Virtiofsd(path, "qemu", first.split()[2])
    if first.startswith("virtiofsd "):
        return Virtiofsd(path, "rust", first.split()[1])
    return None


def find() -> Virtiofsd | None:
    override = os.environ.get("VMSILO_VIRTIOFSD")
    candidates = (override,) if override else CANDIDATES
    for candidate in candidates:
        path = candidate if candidate.startswith("/") else shutil.which(candidate)
        if path and Path(path).exists():
            found = _flavour_of(path)
            if found is not None:
                return found
    return None


def unsupported(
    share: SharedDirectory, settings: Virtiofs, flavour: Flavour
) -> list[tuple[str, str]]:
    """(option, value) pairs of ``share`` (and the VM's ``virtiofs`` settings) that
    ``flavour`` cannot honour."""
    if flavour == "rust":
        return []
    lacking: list[tuple[str, str]] = []
    for option, value in (
        ("uidMap", share.uid_map),
        ("gidMap", share.gid_map),
        ("translateUid", share.translate_uid),
        ("translateGid", share.translate_gid),
    ):
        if value is not None:
            lacking.append((option, repr(value)))
    if share.inode_file_handles == "mandatory":
        lacking.append(("inodeFileHandles", '"mandatory"'))
    if share.cache == "metadata":
        lacking.append(("cache", '"metadata"'))
    if share.allow_mmap:
        lacking.append(("allowMmap", "true"))
    if share.preserve_noatime:
        lacking.append(("preserveNoatime", "true"))
    if settings.seccomp_policy != "kill":
        lacking.append(("virtiofs.seccompPolicy", f'"{settings.seccomp_policy}"'))
    return lacking


def command(
    found: Virtiofsd, share: SharedDirectory, settings: Virtiofs, *, source: str, fd: int
) -> list[str]:
    """virtiofsd's argv for one share; it serves the vhost-user socket on ``fd`` (vmsilod
    creates and owns the socket). ``readonly`` with the C flavour is enforced by the caller
    (a read-only bind mount), as that flavour has no such option."""
    if found.flavour == "rust":
        return _rust(found.path, share, settings, source, fd)
    return _qemu(found.path, share, settings, source, fd)


def _rust(path: str, s: SharedDirectory, v: Virtiofs, source: str, fd: int) -> list[str]:
    argv = [path, f"--fd={fd}", f"--shared-dir={source}",
            f"--thread-pool-size={s.thread_pool_size}",
            f"--inode-file-handles={s.inode_file_handles}", f"--cache={s.cache}",
            f"--log-level={s.log_level}", "--rlimit-nofile=0",
            f"--sandbox={'none' if v.disable_sandbox else 'namespace'}",
            f"--seccomp={v.seccomp_policy}"]  # fmt: skip
    flags = {
        "--xattr": s.xattr,
        "--posix-acl": s.posix_acl,
        "--readonly": s.readonly,
        "--allow-mmap": s.allow_mmap,
        "--no-readdirplus": not s.enable_readdirplus,
        "--writeback": s.writeback,
        "--allow-direct-io": s.allow_direct_io,
        "--killpriv-v2": s.killpriv_v2,
        "--preserve-noatime": s.preserve_noatime,
    }
    argv += [flag for flag, wanted in flags.items() if wanted]
    for flag, value in (("--uid-map", s.uid_map), ("--gid-map", s.gid_map),
                        ("--translate-uid", s.translate_uid),
                        ("--translate-gid", s.translate_gid)):  # fmt: skip
        if value is not None:
            argv.append(f"{flag}={value}")
    return argv


def _qemu(path: str, s: SharedDirectory, v: Virtiofs, source: str, fd: int) -> list[str]:
    def toggle(name: str, on: bool) -> str:
        return name if on else f"no_{name}"

    cache = {"auto": "auto", "always": "always", "never": "none"}[s.cache]
    options = [
        f"source={source}",
        f"cache={cache}",
        f"log_level={_QEMU_LOG_LEVELS[s.log_level]}",
        # chroot is the C flavour's weakest sandbox; it has no "none".
        f"sandbox={'chroot' if v.disable_sandbox else 'namespace'}",
        toggle("xattr", s.xattr or s.posix_acl),  # ACLs live in xattrs
        toggle("posix_acl", s.posix_acl),
        toggle("readdirplus", s.enable_readdirplus),
        toggle("writeback", s.writeback),
        toggle("allow_direct_io", s.allow_direct_io),
        toggle("killpriv_v2", s.killpriv_v2),
    ]
    return [path, f"--fd={fd}", f"--thread-pool-size={s.thread_pool_size}",
            "--rlimit-nofile=0", "-o", ",".join(options)]  # fmt: skip
