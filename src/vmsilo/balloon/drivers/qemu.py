"""QEMU's balloon over QMP.

QEMU speaks in *logical guest size* (RAM minus balloon) for both ``balloon`` and
``query-balloon``; this driver translates to balloon bytes using the guest's RAM from
``query-memory-size-summary``. Guest stats come from the device's ``guest-stats`` property
once ``guest-stats-polling-interval`` is set; ``last-update`` 0 means the guest has not sent
any (no driver yet, or none at all), and the VM is skipped. The QEMU backend names the device
``balloon0``; balloond has its own QMP socket (``<runtime dir>/balloon.sock``) so it never
contends with vmsilod's. ``qemu.qmp`` keeps every event in a history that never shrinks, so
the default listener is given a filter that accepts nothing: this long-lived session
records no events at all.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient
from qemu.qmp.error import QMPError

from vmsilo.balloon.drivers.base import (
    BalloonDriver,
    DriverError,
    GuestStats,
    VmmReplyError,
    checked_object,
    checked_size,
    checked_stats,
)

DEVICE_PATH = "/machine/peripheral/balloon0"
BALLOON_SOCKET = "balloon.sock"  # in the VM's runtime directory
# QEMU writes an unsupported stat as -1 in a uint64.
UNSUPPORTED = (1 << 64) - 1


def balloon_socket(runtime_dir: Path) -> Path:
    return runtime_dir / BALLOON_SOCKET


def _no_events(event: object) -> bool:
    return False


class QemuBalloon(BalloonDriver):
    def __init__(self, vm: str, socket: Path, *, stats_interval: int = 1,
                 timeout: float = 5.0) -> None:
        super().__init__(vm)
        self.socket = socket
        self.stats_interval = stats_interval
        self.timeout = timeout
        self.ram = 0
        self._qmp: QMPClient | None = None

    async def connect(self) -> None:
        qmp = QMPClient(self.vm)
        # The default listener cannot be removed; a filter that accepts nothing keeps its
        # queue and history empty for the life of the session.
        qmp.events.event_filter = _no_events
        try:
            await asyncio.wait_for(qmp.connect(str(self.socket)), self.timeout)
        except (OSError, QMPError, TimeoutError) as exc:
            raise DriverError(self.vm, f"cannot connect to QMP at {self.socket}: {exc}") from exc
        self._qmp = qmp
        summary = checked_object(self.vm, await self._execute("query-memory-size-summary"),
                                 "query-memory-size-summary")
        self.ram = (checked_size(self.vm, summary.get("base-memory"), "base-memory")
                    + checked_size(self.vm, summary.get("plugged-memory", 0), "plugged-memory"))
        if self.ram == 0:
            raise VmmReplyError(self.vm, "QEMU reports a guest without memory")
        await self._execute("qom-set", {"path": DEVICE_PATH,
                                        "property": "guest-stats-polling-interval",
                                        "value": self.stats_interval})

    async def close(self) -> None:
        if self._qmp is not None:
            qmp, self._qmp = self._qmp, None
            await qmp.disconnect()

    async def _execute(self, command: str, arguments: dict[str, Any] | None = None) -> object:
        if self._qmp is None:
            raise DriverError(self.vm, "not connected to QMP")
        try:
            return await asyncio.wait_for(self._qmp.execute(command, arguments), self.timeout)
        except (QMPError, OSError, TimeoutError) as exc:
            raise DriverError(self.vm, f"QMP {command} failed: {exc}") from exc

    async def stats_polling_interval(self) -> int:
        reply = await self._execute("qom-get", {"path": DEVICE_PATH,
                                                "property": "guest-stats-polling-interval"})
        return checked_size(self.vm, reply, "guest-stats-polling-interval")

    async def actual(self) -> int:
        reply = checked_object(self.vm, await self._execute("query-balloon"), "query-balloon")
        logical = checked_size(self.vm, reply.get("actual"), "balloon actual")
        if logical > self.ram:
            raise VmmReplyError(self.vm, f"balloon actual {logical} exceeds RAM {self.ram}")
        return self.ram - logical

    async def set_target(self, balloon_bytes: int) -> None:
        # QEMU refuses a logical size of 0, so the balloon can never take the whole guest.
        self._check_target(balloon_bytes, self.ram - 1)
        await self._execute("balloon", {"value": self.ram - balloon_bytes})

    async def stats(self) -> GuestStats | None:
        reply = checked_object(self.vm, await self._execute(
            "qom-get", {"path": DEVICE_PATH, "property": "guest-stats"}), "guest-stats")
        untrusted_stamp = reply.get("last-update")
        if (not isinstance(untrusted_stamp, int) or isinstance(untrusted_stamp, bool)
                or untrusted_stamp < 0):
            raise VmmReplyError(self.vm, f"guest-stats last-update is {untrusted_stamp!r:.40}")
        if untrusted_stamp == 0:
            return None
        untrusted_stats = checked_object(self.vm, reply.get("stats"), "guest-stats stats")

        def stat(name: str) -> object:
            value = untrusted_stats.get(name)
            return None if value == UNSUPPORTED else value

        return checked_stats(self.vm, stat("stat-free-memory"), stat("stat-total-memory"),
                             stat("stat-disk-caches"), stat("stat-available-memory"),
                             float(untrusted_stamp))
