"""Start a program as root of a new user namespace with the uid and gid maps vmsilod chose:
virtiofsd's launcher. Run by vmsilod (as root) as ``python -m vmsilo.shares.userns``; it
ends by exec'ing the program, so the pid vmsilod spawned is the program's.

Only a process that is privileged in the parent namespace may write a map of more than one
line (``user_namespaces(7)``, "Defining user and group ID mappings"), and the process whose
namespace it is has lost those privileges the moment it unshared. So the launcher, still
single-threaded, forks a helper first: the launcher unshares (user, mount, IPC and UTS
namespaces at once, so the others belong to the new user namespace), the helper (still root
of the host) writes ``/proc/<launcher>/uid_map`` and ``gid_map`` and exits, and the launcher
then becomes uid and gid 0 *inside*, i.e. the VM's own unprivileged ids outside.

The share itself is mounted first, as real root and before any of that, from the directory
descriptor vmsilod opened without following links (``vmsilo.shares.source``; passed as
``--source-fd``): ``open_tree(2)`` clones a detached mount of exactly that directory (the
inode the descriptor names, whatever its path leads to by now), and the descriptor is closed
so virtiofsd never holds a handle from which ``..`` climbs into the host's tree. The launcher
then unshares a mount namespace of its own (everything private), mounts a small tmpfs over
``/tmp`` (``MOUNT_BASE``: hidden only from virtiofsd, which uses no /tmp) and moves the clone
onto ``SOURCE`` in it, ``nosuid``, ``nodev``, and read-only for a read-only share
(``mount_setattr(2)``, or a bind remount before Linux 5.12). virtiofsd is given ``SOURCE`` as
its shared directory: no path of the host's is looked up again. Because these mounts are made
by real root and only then copied into the user namespace's mount namespace, the kernel locks
them there (``mount_namespaces(7)``, "Restrictions on mount namespaces"): virtiofsd, even
compromised, cannot make the share writable, clear ``nosuid``/``nodev``, or unmount it to see
what lies beneath.

From there it works with the namespace's identity only: the capability bounding set (a new
user namespace starts with a full one, so this comes after the unshare), then exec. Before the
unshare, as real root, it clears the supplementary groups and sets the open-file limit
(raising a hard limit needs ``CAP_SYS_RESOURCE`` in the host's namespace). Errors go to stderr
(virtiofsd's log) with exit status 1.

Inside, capabilities only act on files whose owner and group the map names: virtiofsd can
create, chown and override permissions for the guest's ids, but never on a host file of an
unmapped id (root's, say), never make a device node (``CAP_MKNOD`` counts only in the host's
namespace), and setuid/setgid bits it sets can only name mapped ids.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import resource
import sys
from collections.abc import Sequence
from pathlib import Path

from vmsilo.host.ids import IdMapLine

MODULE = "vmsilo.shares.userns"

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
PR_CAPBSET_DROP = 24
# x86_64 and aarch64 alike (syscalls added since 4.x share one number on every architecture).
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_MOUNT_SETATTR = 442
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
OPEN_TREE_CLONE = 0x1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4

# Where virtiofsd finds its share: a tmpfs of the launcher's own over /tmp (in virtiofsd's
# mount namespace only), and the share's mount in it. Fixed, so no host path is named.
MOUNT_BASE = "/tmp"
SOURCE = "/tmp/vmsilo-share"
_BASE_OPTIONS = b"mode=0755,size=16k,nr_inodes=8"

# (statvfs ST_* bit, mount MS_* bit) of the flags a bind remount keeps from the share's own
# mount: noexec, noatime, nodiratime, relatime (nosuid and nodev are always set).
_KEPT_FLAGS = ((os.ST_NOEXEC, MS_NOEXEC), (os.ST_NOATIME, 0x400), (os.ST_NODIRATIME, 0x800),
               (os.ST_RELATIME, 0x200000))

# capabilities(7) numbers of the names vmsilod may keep.
CAPABILITY_NUMBERS = {
    "chown": 0, "dac_override": 1, "dac_read_search": 2, "fowner": 3, "fsetid": 4,
    "kill": 5, "setgid": 6, "setuid": 7, "setpcap": 8, "sys_chroot": 18, "sys_admin": 21,
    "sys_resource": 24, "mknod": 27, "setfcap": 31,
}  # fmt: skip


class LaunchError(Exception):
    pass


def command(
    python: str,
    uid_map: Sequence[IdMapLine],
    gid_map: Sequence[IdMapLine],
    *,
    nofile: int,
    capabilities: Sequence[str],
    source_fd: int | None,
    readonly: bool,
    program: Sequence[str],
) -> list[str]:
    """The launcher's argv: ``program`` runs as root of a user namespace with these maps,
    ``capabilities`` as its bounding set, ``nofile`` as its open-file limit, and the directory
    open as ``source_fd`` (an ``O_PATH`` descriptor the launcher inherits: pass it) mounted
    at ``SOURCE``, read-only when ``readonly``."""
    unknown = sorted(set(capabilities) - CAPABILITY_NUMBERS.keys())
    if unknown:
        raise ValueError(f"unknown capabilities: {', '.join(unknown)}")
    if readonly and source_fd is None:
        raise ValueError("readonly needs a source descriptor")
    argv = [python, "-m", MODULE, f"--nofile={nofile}",
            f"--capabilities={','.join(capabilities)}"]  # fmt: skip
    argv += [f"--uid-map={line.inside}:{line.outside}:{line.count}" for line in uid_map]
    argv += [f"--gid-map={line.inside}:{line.outside}:{line.count}" for line in gid_map]
    if source_fd is not None:
        argv.append(f"--source-fd={source_fd}")
    if readonly:
        argv.append("--readonly")
    return [*argv, "--", *program]


# -- the launcher process ----------------------------------------------------------------------


def _libc() -> ctypes.CDLL:
    """The C library with the prototypes used here (so every argument has its C width)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.unshare.argtypes = [ctypes.c_int]
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                           ctypes.c_void_p]  # fmt: skip
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                           ctypes.c_ulong]  # fmt: skip
    libc.syscall.restype = ctypes.c_long
    return libc


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise LaunchError(f"{what}: {os.strerror(code)}") from OSError(code, os.strerror(code))


def _map_line(text: str) -> IdMapLine:
    inside, outside, count = (int(part) for part in text.split(":"))
    return IdMapLine(inside, outside, count)


def _write_maps(pid: int, uid_map: Sequence[IdMapLine], gid_map: Sequence[IdMapLine]) -> None:
    # Each map is written in one write(2), as the kernel requires. setgroups stays "allow":
    # the writer is privileged, and the groups a process inside can set are mapped ones.
    for name, lines in (("uid_map", uid_map), ("gid_map", gid_map)):
        text = "".join(f"{line.render()}\n" for line in lines).encode()
        fd = os.open(f"/proc/{pid}/{name}", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, text)
        finally:
            os.close(fd)


def _helper(ready: int, launcher: int, uid_map: list[IdMapLine],
            gid_map: list[IdMapLine]) -> None:
    """The forked helper: wait until the launcher has unshared, write its maps, exit."""
    try:
        if os.read(ready, 1) != b"1":
            os._exit(1)  # the launcher failed before unsharing and said so itself
        _write_maps(launcher, uid_map, gid_map)
    except BaseException as exc:  # reported; the exit status tells the launcher
        print(f"vmsilo-userns: cannot write the id maps of pid {launcher}: {exc}",
              file=sys.stderr, flush=True)
        os._exit(1)
    os._exit(0)


def _enter(uid_map: list[IdMapLine], gid_map: list[IdMapLine]) -> None:
    libc = _libc()
    ready_read, ready_write = os.pipe()
    launcher = os.getpid()
    helper = os.fork()
    if helper == 0:
        os.close(ready_write)
        _helper(ready_read, launcher, uid_map, gid_map)
    os.close(ready_read)
    try:
        _check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS),
               "unshare(user, mount, IPC, UTS namespaces)")  # fmt: skip
        os.write(ready_write, b"1")
    finally:
        os.close(ready_write)
        _, status = os.waitpid(helper, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise LaunchError("the helper could not write the id maps")
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]  # fmt: skip


def _mount_share(libc: ctypes.CDLL, source_fd: int, readonly: bool) -> None:
    """As real root: the directory ``source_fd`` names, mounted at ``SOURCE`` in a private
    mount namespace of the launcher's (see the module docstring); ``source_fd`` is closed."""
    # syscall(2) is variadic: each argument is given its C type explicitly.
    tree = libc.syscall(ctypes.c_long(SYS_OPEN_TREE), ctypes.c_int(source_fd),
                        ctypes.c_char_p(b""),
                        ctypes.c_uint(OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH
                                      | AT_RECURSIVE))  # fmt: skip
    code = ctypes.get_errno()
    os.close(source_fd)  # never inherited by virtiofsd
    if tree < 0:
        raise LaunchError(f"clone a mount of the shared directory (open_tree): "
                          f"{os.strerror(code)}")
    try:
        _check(libc.unshare(CLONE_NEWNS), "unshare(mount namespace)")
        _check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
        _check(libc.mount(b"tmpfs", MOUNT_BASE.encode(), b"tmpfs",
                          MS_NOSUID | MS_NODEV | MS_NOEXEC, _BASE_OPTIONS),
               f"mount a tmpfs on {MOUNT_BASE}")  # fmt: skip
        os.mkdir(SOURCE, 0o755)
        attributes = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | (MOUNT_ATTR_RDONLY if readonly else 0)
        attr = _MountAttr(attributes, 0, 0, 0)
        result = libc.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(tree),
                              ctypes.c_char_p(b""), ctypes.c_uint(AT_EMPTY_PATH | AT_RECURSIVE),
                              ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))  # fmt: skip
        set_later = result != 0 and ctypes.get_errno() == errno.ENOSYS
        if result != 0 and not set_later:
            _check(result, "set nosuid, nodev" + (", read-only" if readonly else ""))
        _check(libc.syscall(ctypes.c_long(SYS_MOVE_MOUNT), ctypes.c_int(tree),
                            ctypes.c_char_p(b""), ctypes.c_int(AT_FDCWD),
                            ctypes.c_char_p(SOURCE.encode()),
                            ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH)),
               f"mount the shared directory on {SOURCE}")  # fmt: skip
    finally:
        os.close(tree)
    if set_later:
        _remount(libc, readonly)


def _remount(libc: ctypes.CDLL, readonly: bool) -> None:
    """Before Linux 5.12 (no mount_setattr): a bind remount of the top mount, keeping the
    flags it had (statvfs(3) reports them as ST_* bits)."""
    present = os.statvfs(SOURCE).f_flag
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | (MS_RDONLY if readonly else 0)
    for st_bit, ms_bit in _KEPT_FLAGS:
        if present & st_bit:
            flags |= ms_bit
    _check(libc.mount(None, SOURCE.encode(), None, flags, None),
           f"make {SOURCE} nosuid, nodev" + (", read-only" if readonly else ""))


def _limit_capabilities(libc: ctypes.CDLL, keep: set[int]) -> None:
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    for cap in range(last + 1):
        if cap not in keep:
            _check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop capability {cap}")


def launch(args: argparse.Namespace) -> None:
    """Everything but the exec (see the module docstring for the order and why)."""
    uid_map = [_map_line(v) for v in args.uid_map]
    gid_map = [_map_line(v) for v in args.gid_map]
    if not uid_map or not gid_map:
        raise LaunchError("both --uid-map and --gid-map are needed")
    keep = {CAPABILITY_NUMBERS[name] for name in args.capabilities.split(",") if name}
    if args.readonly and args.source_fd is None:
        raise LaunchError("--readonly needs --source-fd")
    os.setgroups([])
    resource.setrlimit(resource.RLIMIT_NOFILE, (args.nofile, args.nofile))
    libc = _libc()
    if args.source_fd is not None:
        _mount_share(libc, args.source_fd, args.readonly)
    _enter(uid_map, gid_map)
    # Nothing mounted here travels back to the host's namespace, nor the other way.
    _check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
    _limit_capabilities(libc, keep)


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=MODULE, description=__doc__.splitlines()[0])
    parser.add_argument("--uid-map", action="append", default=[],
                        help="inside:outside:count (repeat)")
    parser.add_argument("--gid-map", action="append", default=[],
                        help="inside:outside:count (repeat)")
    parser.add_argument("--nofile", type=int, required=True)
    parser.add_argument("--capabilities", required=True, help="comma-separated names")
    parser.add_argument("--source-fd", type=int,
                        help=f"an inherited O_PATH descriptor of the share: mounted at {SOURCE}")
    parser.add_argument("--readonly", action="store_true", help="the share read-only")
    parser.add_argument("program", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.program[:1] == ["--"]:
        args.program = args.program[1:]
    if not args.program:
        parser.error("no program to run")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        launch(args)
        os.execv(args.program[0], args.program)
    except (LaunchError, OSError, ValueError) as exc:
        print(f"vmsilo-userns: {exc}", file=sys.stderr, flush=True)
        return 1
    return 1  # not reached: exec replaced us


if __name__ == "__main__":
    sys.exit(main())
