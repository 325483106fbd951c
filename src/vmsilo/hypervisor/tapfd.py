"""Opening TAP devices for a VMM that runs unprivileged: vmsilod (root) attaches to each
persistent TAP and hands the file descriptor to the VMM, which then needs no access to
``/dev/net/tun`` (often root-only) or ``/dev/vhost-net``. The TAP itself is created by the
network layer with the configured user as owner.
"""

from __future__ import annotations

import fcntl
import os
import struct
from contextlib import ExitStack

TUN_DEVICE = "/dev/net/tun"
VHOST_NET_DEVICE = "/dev/vhost-net"
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000  # the VMM exchanges virtio-net headers: checksum/segmentation offloads


def open_tap(name: str) -> int:
    """A descriptor attached to the existing TAP ``name`` (OSError if it cannot be)."""
    fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    try:
        request = struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
        fcntl.ioctl(fd, TUNSETIFF, request)
    except OSError:
        os.close(fd)
        raise
    return fd


def open_vhost() -> int | None:
    """A vhost-net descriptor (in-kernel virtio-net datapath), or None if there is none."""
    try:
        return os.open(VHOST_NET_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return None


class NicFds:
    """The descriptors of one launch, closed once the VMM holds its copies."""

    def __init__(self) -> None:
        self.tap: dict[str, int] = {}
        self.vhost: dict[str, int] = {}
        self._stack = ExitStack()

    def open(self, nic: str, tap: str) -> None:
        fd = open_tap(tap)
        self._stack.callback(os.close, fd)
        self.tap[nic] = fd
        vhost = open_vhost()
        if vhost is not None:
            self._stack.callback(os.close, vhost)
            self.vhost[nic] = vhost

    def all(self) -> list[int]:
        return [*self.tap.values(), *self.vhost.values()]

    def close(self) -> None:
        self._stack.close()
