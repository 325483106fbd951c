"""Config values checked for the grammar of the place they land, where a field's own type
cannot say it: the guest kernel command line (``kernelParams``), QEMU's ``-drive``/``-device``
options (the free keys of ``additionalDisks``/``rootDisk``) and unix socket paths (VM names and
share tags).

What lands where, and who guards it (the audit behind issue 15):

- Kernel command line (``hypervisor.spec.kernel_cmdline``): the VM name (``checks``' name
  rule), network words (``fields``: addresses and networks refuse IPv6 scope ids, a
  nameserver's scope must be an interface name, interface names match the guest decoder),
  share words (tags by ``checks``, ``mountPoint`` by ``fields.check_guest_mount_point``), and
  ``kernelParams``: the admin's own words, passed as they are (they may set anything, by
  design), but each list entry must be exactly one word (``protocol.cmdline``), so what the
  config lists is what the kernel gets.
- QEMU option strings (``hypervisor.qemu``): the VM name in ``-name`` and tags in
  ``vhost-user-fs-device`` (name rules without commas), NIC names and MACs, PCI paths
  (normalised BDFs); a disk's ``id`` is its virtio-blk serial, written with commas doubled
  (``hypervisor.qemuopt``) and limited here to 20 printable ASCII bytes; ``format`` and
  ``block-size`` are checked here. ``qemu.extraArgs`` are whole arguments of the admin's, not
  values inside one.
- virtiofsd's ``-o source=`` (C flavour): the share's host path, escaped by
  ``shares.fuseopt``.
- Unix socket paths (``sun_path``: 108 bytes with the NUL): each VM's sockets in its runtime
  directory, the longest being ``<run dir>/<vm>/virtiofs-<tag>/socket``, in either mode.
"""

from __future__ import annotations

import re
from typing import Any

from vmsilo.config.model import Disk, VmConfig
from vmsilo.protocol.cmdline import word_problem

# sockaddr_un.sun_path holds 108 bytes, the terminating NUL included (unix(7)).
SUN_PATH_MAX = 107
# The run directories of host/paths.py at their longest: system mode, then user mode with
# $XDG_RUNTIME_DIR (/run/user/<uid>) and without it (/tmp/vmsilo-<uid>), for a 10-digit uid.
RUN_DIRS = (
    ("system mode", "/run/vmsilo"),
    ("user mode", "/run/user/4294967294/vmsilo"),
    ("user mode without XDG_RUNTIME_DIR", "/tmp/vmsilo-4294967294/vmsilo"),
)
# The sockets of hypervisor.spec.RuntimeLayout, and shares.runner's per-share socket.
VM_SOCKETS = ("vmm.sock", "balloon.sock", "channel.sock", "console.sock")
SHARE_DIRECTORY_PREFIX = "virtiofs-"
SHARE_SOCKET = "socket"
# virtio-blk's serial (VIRTIO_BLK_ID_BYTES).
SERIAL_MAX = 20
DISK_FORMATS = ("raw", "qcow2")
# QEMU's logical/physical_block_size: a power of two from 512 bytes to 2 MiB.
BLOCK_SIZE_MIN = 512
BLOCK_SIZE_MAX = 2 * 1024 * 1024
_SWITCH_WORDS = ("true", "false", "on", "off", "1", "0")
_PLAIN_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")


def _longest_run_dir() -> tuple[str, str]:
    return max(RUN_DIRS, key=lambda item: len(item[1].encode()))


def share_socket_path(run_dir: str, vm: str, tag: str) -> str:
    return f"{run_dir}/{vm}/{SHARE_DIRECTORY_PREFIX}{tag}/{SHARE_SOCKET}"


def longest_socket_path(vm: str, tags: list[str]) -> str:
    """The longest unix socket path VM ``vm`` with shares ``tags`` needs, in any mode."""
    _, run_dir = _longest_run_dir()
    paths = [f"{run_dir}/{vm}/{name}" for name in VM_SOCKETS]
    paths += [share_socket_path(run_dir, vm, tag) for tag in tags]
    return max(paths, key=lambda path: len(path.encode()))


def socket_problems(vm_path: str, name: str, vm: VmConfig, home_tag: str) -> list[str]:
    """Socket paths of VM ``name`` that cannot fit in ``sun_path`` (``vm_path`` is
    ``vms.<name>``)."""
    mode, run_dir = _longest_run_dir()
    problems = []
    control = longest_socket_path(name, [])
    if len(control.encode()) > SUN_PATH_MAX:
        room = len(name) - (len(control.encode()) - SUN_PATH_MAX)
        problems.append(
            f"{vm_path}: the VM's socket {control} ({mode}) would be {len(control.encode())} "
            f"bytes, over the {SUN_PATH_MAX} a unix socket path can hold; use a VM name of at "
            f"most {room} characters"
        )
        return problems
    overhead = len(share_socket_path(run_dir, "", "").encode())
    room = SUN_PATH_MAX - overhead  # for the VM name and the tag together
    shares = [(f"{vm_path}.sharedHome", home_tag, True)] if vm.shared_home is not False else []
    shares += [
        (f'{vm_path}.sharedDirectories.{_key(tag)}', tag, False) for tag in vm.shared_directories
    ]
    for where, tag, is_home in shares:
        path = share_socket_path(run_dir, name, tag)
        size = len(path.encode())
        if size <= SUN_PATH_MAX:
            continue
        fix = (
            f"use a VM name of at most {room - len(home_tag)} characters, or set "
            "sharedHome = false"
            if is_home
            else f"shorten the tag or the VM name (together at most {room} characters)"
        )
        problems.append(
            f"{where}: this share's virtiofs socket {path} ({mode}) would be {size} bytes, over "
            f"the {SUN_PATH_MAX} a unix socket path can hold; {fix}"
        )
    return problems


def kernel_param_problems(vm_path: str, vm: VmConfig) -> list[str]:
    problems = []
    for index, word in enumerate(vm.kernel_params):
        problem = word_problem(word)
        if problem is not None:
            problems.append(
                f"{vm_path}.kernelParams[{index}]: {word!r} is not one kernel command-line word: "
                f"{problem}; write each word as its own list entry (e.g. kernelParams = "
                '["quiet", "loglevel=3"]), spaces only inside double quotes'
            )
    return problems


def disk_problems(vm_path: str, vm: VmConfig) -> list[str]:
    """The free keys of ``rootDisk`` and ``additionalDisks`` that the QEMU backend reads
    (``daemon.plan.disk_spec``): ``id``, ``format``, ``block-size``, ``ro``, ``sparse``,
    ``direct``. Other keys are upstream's crosvm ones, ignored by QEMU."""
    disks: list[tuple[str, Disk]] = []
    if vm.root_disk is not None:
        disks.append((f"{vm_path}.rootDisk", vm.root_disk))
    disks += [(f"{vm_path}.additionalDisks[{i}]", d) for i, d in enumerate(vm.additional_disks)]
    problems = []
    for where, disk in disks:
        extra: dict[str, Any] = disk.model_extra or {}
        serial = extra.get("id")
        if serial is not None and where.endswith("]"):  # rootDisk's serial is always ours
            text = str(serial)
            if not text or not all(" " <= c <= "~" for c in text):
                problems.append(
                    f"{where}.id: {serial!r} cannot be a disk serial; use 1-{SERIAL_MAX} "
                    "printable ASCII characters, e.g. \"data\""
                )
            elif len(text) > SERIAL_MAX:
                problems.append(
                    f"{where}.id: {serial!r} is {len(text)} characters, and the guest sees a "
                    f"disk's serial (its id) cut to {SERIAL_MAX}; use at most {SERIAL_MAX}, "
                    f'e.g. "{text[:SERIAL_MAX]}"'
                )
        fmt = extra.get("format")
        if fmt is not None and fmt not in DISK_FORMATS:
            problems.append(
                f"{where}.format: {fmt!r} is not a disk format vmsilo opens; use "
                f'{" or ".join(repr(f) for f in DISK_FORMATS)}, or remove it (qcow2 is detected)'
            )
        size = extra.get("block-size")
        if size is not None and not (
            isinstance(size, int) and not isinstance(size, bool)
            and BLOCK_SIZE_MIN <= size <= BLOCK_SIZE_MAX and size & (size - 1) == 0
        ):  # fmt: skip
            problems.append(
                f"{where}.block-size: {size!r} is not a block size; use a power of two from "
                f"{BLOCK_SIZE_MIN} to {BLOCK_SIZE_MAX} without quotes, e.g. 4096"
            )
        for switch in ("ro", "sparse", "direct"):
            value = extra.get(switch)
            if value is None or isinstance(value, bool):
                continue
            if not (isinstance(value, str) and value.lower() in _SWITCH_WORDS):
                problems.append(
                    f"{where}.{switch}: {value!r} is neither true nor false; write "
                    f"{switch} = true or {switch} = false"
                )
    return problems


def _key(key: str) -> str:
    """``checks.path_key`` (checks imports this module, so not from there)."""
    if _PLAIN_KEY_RE.fullmatch(key):
        return key
    return '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
