"""Which virtiofsd this host has, and the command line that serves one share with it.

Two flavours exist: the Rust virtiofsd (Debian package ``virtiofsd``, in ``/usr/libexec`` or
on ``PATH``) and the C one QEMU shipped until 8.0 (``/usr/lib/qemu/virtiofsd``). vmsilo uses
the Rust one when it is installed. Either runs as root of a user namespace vmsilod made
(``runner``), so ``uidMap``/``gidMap`` are lines of that namespace's map (``idmap``) and are
never passed to virtiofsd. The C one lacks some options; ``unsupported`` names each option a
share sets that the found flavour cannot honour in that namespace, so the VM is refused before
anything starts instead of an option being dropped silently. Pure, apart from ``find``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from vmsilo.config.model import SharedDirectory, Virtiofs
from vmsilo.host import proc
from vmsilo.shares import fuseopt
from vmsilo.shares.idmap import NAMESPACE_TRANSLATIONS, Flavour, unsupported_translation

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


# Why an option cannot be honoured, and the fix, for ``unsupported``.
LACKS_C = f"QEMU's C virtiofsd cannot honour it; {INSTALL_RUST}, or remove the option"
LACKS_TRANSLATION = (
    f"QEMU's C virtiofsd has no id translation, and its user namespace can express only "
    f"{' and '.join(repr(k) for k in NAMESPACE_TRANSLATIONS)} translations; {INSTALL_RUST}, "
    "or use one of those")
LACKS_HANDLES = (
    "file handles need CAP_DAC_READ_SEARCH in the host's user namespace, which virtiofsd "
    'no longer has (it runs as root of its own); use "prefer" or "never"')


def unsupported(
    share: SharedDirectory, settings: Virtiofs, flavour: Flavour
) -> list[tuple[str, str, str]]:
    """(option, value, why and the fix) of each option of ``share`` (and the VM's
    ``virtiofs`` settings) that ``flavour`` cannot honour in vmsilo's user namespace."""
    lacking: list[tuple[str, str, str]] = []
    if share.inode_file_handles == "mandatory":
        lacking.append(("inodeFileHandles", '"mandatory"', LACKS_HANDLES))
    if flavour == "rust":
        return lacking
    for option, value in (("translateUid", share.translate_uid),
                          ("translateGid", share.translate_gid)):  # fmt: skip
        if unsupported_translation(value, flavour):
            lacking.append((option, repr(value), LACKS_TRANSLATION))
    if share.cache == "metadata":
        lacking.append(("cache", '"metadata"', LACKS_C))
    if share.allow_mmap:
        lacking.append(("allowMmap", "true", LACKS_C))
    if share.preserve_noatime:
        lacking.append(("preserveNoatime", "true", LACKS_C))
    if settings.seccomp_policy != "kill":
        lacking.append(("virtiofs.seccompPolicy", f'"{settings.seccomp_policy}"', LACKS_C))
    return lacking


def command(
    found: Virtiofsd, share: SharedDirectory, settings: Virtiofs, *, source: str, fd: int
) -> list[str]:
    """virtiofsd's argv for one share; it serves the vhost-user socket on ``fd`` (vmsilod
    creates and owns the socket). ``readonly`` is also a read-only bind mount made by the
    launcher, for both flavours; the C one has no option for it. A translation the C one
    can honour is folded into the namespace map instead (``idmap``)."""
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
    # uidMap/gidMap are vmsilo's namespace map, not virtiofsd's (it runs as root inside).
    for flag, value in (("--translate-uid", s.translate_uid),
                        ("--translate-gid", s.translate_gid)):  # fmt: skip
        if value is not None:
            argv.append(f"{flag}={value}")
    return argv


def _qemu(path: str, s: SharedDirectory, v: Virtiofs, source: str, fd: int) -> list[str]:
    def toggle(name: str, on: bool) -> str:
        return name if on else f"no_{name}"

    cache = {"auto": "auto", "always": "always", "never": "none"}[s.cache]
    options = [
        f"source={fuseopt.value(source)}",  # a path may hold commas
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
