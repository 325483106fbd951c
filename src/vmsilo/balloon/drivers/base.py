"""The balloon driver interface, the stats it returns, and the checks on what a VMM says.

A driver talks to one VM's hypervisor. Sizes are always the balloon's size in bytes (memory
taken from the guest), whatever the VMM's own convention; drivers translate. Everything a VMM
returns passes through the ``checked_*`` helpers before use: the guest writes the stats the
VMM relays, so they are as untrusted as the guest. A violation raises ``VmmReplyError``; the
daemon skips the VM for the tick and reports it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vmsilo.protocol.errors import ProtocolError

# Larger than any RAM a VM gets; anything above is a lie or a -1 written unsigned.
MAX_BYTES = 1 << 48
MAX_REPLY = 1 << 20


class DriverError(Exception):
    """The VMM could not be reached or refused a request."""

    def __init__(self, vm: str, reason: str) -> None:
        self.vm = vm
        self.reason = reason
        super().__init__(f"VM {vm}: balloon: {reason}")


class VmmReplyError(DriverError, ProtocolError):
    """The VMM (or the guest through it) sent something that is not a valid reply."""


@dataclass(frozen=True)
class GuestStats:
    """The guest's memory as its balloon driver reports it, validated, in bytes."""

    available: int | None  # the guest's own MemAvailable estimate, when it reports one
    free: int
    total: int
    caches: int
    last_update: float  # when the VMM received them (seconds since the epoch)


def checked_size(vm: str, untrusted_value: object, what: str) -> int:
    if (not isinstance(untrusted_value, int) or isinstance(untrusted_value, bool)
            or not 0 <= untrusted_value <= MAX_BYTES):
        raise VmmReplyError(vm, f"{what} is not a size in bytes: {untrusted_value!r:.80}")
    return untrusted_value


def checked_object(vm: str, untrusted_value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(untrusted_value, dict):
        raise VmmReplyError(vm, f"{what} is not an object: {untrusted_value!r:.80}")
    return untrusted_value


def checked_stats(
    vm: str,
    untrusted_free: object,
    untrusted_total: object,
    untrusted_caches: object,
    untrusted_available: object,
    last_update: float,
) -> GuestStats | None:
    """Stats from optional raw values (None: the guest does not report that one). None when
    the guest reports too little for the policy (free and total are needed)."""
    if untrusted_free is None or untrusted_total is None:
        return None
    total = checked_size(vm, untrusted_total, "guest total memory")
    free = checked_size(vm, untrusted_free, "guest free memory")
    caches = (0 if untrusted_caches is None
              else checked_size(vm, untrusted_caches, "guest disk caches"))
    available = (None if untrusted_available is None
                 else checked_size(vm, untrusted_available, "guest available memory"))
    if free + caches > total or (available is not None and available > total):
        raise VmmReplyError(vm, f"guest reports more free memory than its total ({total})")
    return GuestStats(available, free, total, caches, last_update)


class BalloonDriver(ABC):
    """One VM's balloon. Methods raise ``DriverError`` when the VMM does not answer well."""

    def __init__(self, vm: str) -> None:
        self.vm = vm

    async def connect(self) -> None:  # noqa: B027 - drivers without a session need nothing
        """Open the control session, if the VMM keeps one."""

    async def close(self) -> None:  # noqa: B027
        """Close the control session."""

    @abstractmethod
    async def actual(self) -> int:
        """The balloon's current size in bytes."""

    @abstractmethod
    async def set_target(self, balloon_bytes: int) -> None:
        """Ask the guest to move its balloon to ``balloon_bytes``."""

    @abstractmethod
    async def stats(self) -> GuestStats | None:
        """The guest's memory stats, or None when this VM has none (yet): skip it."""

    def _check_target(self, balloon_bytes: int, limit: int = MAX_BYTES) -> None:
        if not 0 <= balloon_bytes <= limit:
            raise ValueError(f"VM {self.vm}: balloon target {balloon_bytes} is outside "
                             f"0..{limit} bytes")
