"""cloud-hypervisor's balloon over its REST API (HTTP/1.1 on the ``--api-socket``).

``PUT /api/v1/vm.resize {"desired_balloon": n}`` sets the balloon size itself (no logical-size
translation); ``GET /api/v1/vm.info`` gives ``memory_actual_size`` (RAM minus balloon).
Guest stats (``GET /api/v1/vm.balloon-stats``) are newer than most releases: the first call
probes, and a VMM that answers 404 is remembered as having no stats, so the VM is skipped as
ChromeOS skips VMs without stats. The VMM samples the guest on each request, so a reply is
fresh by construction and stamped with our clock. One short connection per request keeps
this independent of the server's keep-alive behaviour.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from vmsilo.balloon.drivers.base import (
    MAX_REPLY,
    BalloonDriver,
    DriverError,
    GuestStats,
    VmmReplyError,
    checked_object,
    checked_size,
    checked_stats,
)

MAX_HEADER = 16 * 1024


class CloudHypervisorBalloon(BalloonDriver):
    def __init__(self, vm: str, socket: Path, *, timeout: float = 5.0) -> None:
        super().__init__(vm)
        self.socket = socket
        self.timeout = timeout
        self.has_stats: bool | None = None  # None until probed

    async def _request(self, method: str, path: str,
                       body: object | None = None) -> tuple[int, bytes]:
        try:
            return await asyncio.wait_for(self._exchange(method, path, body), self.timeout)
        except (OSError, TimeoutError) as exc:
            raise DriverError(self.vm, f"{method} {path} on {self.socket} failed: "
                              f"{str(exc) or 'timed out'}") from exc

    async def _exchange(self, method: str, path: str, body: object | None) -> tuple[int, bytes]:
        payload = b"" if body is None else json.dumps(body).encode()
        head = (f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n")
        if body is not None:
            head += "Content-Type: application/json\r\n"
        reader, writer = await asyncio.open_unix_connection(str(self.socket), limit=MAX_HEADER)
        try:
            writer.write(head.encode() + b"\r\n" + payload)
            await writer.drain()
            return await self._read_response(reader)
        finally:
            writer.close()

    async def _read_response(self, reader: asyncio.StreamReader) -> tuple[int, bytes]:
        try:
            untrusted_head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise VmmReplyError(self.vm, "API reply has no complete header") from exc
        lines = untrusted_head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise VmmReplyError(self.vm, f"API reply status line is {lines[0]!r:.80}")
        status = int(parts[1])
        length = None
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep and name.strip().lower() == "content-length":
                if not value.strip().isdigit() or int(value) > MAX_REPLY:
                    raise VmmReplyError(self.vm, f"API reply length is {value.strip()!r:.40}")
                length = int(value)
        if status == 204 or length == 0:
            return status, b""
        try:
            if length is None:  # no length: the body runs to the end of the connection
                body = await reader.read(MAX_REPLY + 1)
                if len(body) > MAX_REPLY:
                    raise VmmReplyError(self.vm, "API reply body is too large")
                return status, body
            return status, await reader.readexactly(length)
        except asyncio.IncompleteReadError as exc:
            raise VmmReplyError(self.vm, "API reply body is shorter than announced") from exc

    def _json(self, body: bytes, what: str) -> object:
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise VmmReplyError(self.vm, f"{what} reply is not JSON") from exc

    async def actual(self) -> int:
        status, body = await self._request("GET", "/api/v1/vm.info")
        if status != 200:
            raise DriverError(self.vm, f"vm.info answered status {status}")
        info = checked_object(self.vm, self._json(body, "vm.info"), "vm.info")
        config = checked_object(self.vm, info.get("config"), "vm.info config")
        memory = checked_object(self.vm, config.get("memory"), "vm.info config.memory")
        total = checked_size(self.vm, memory.get("size"), "memory size")
        hotplugged = memory.get("hotplugged_size")
        if hotplugged is not None:
            total += checked_size(self.vm, hotplugged, "hotplugged memory size")
        usable = checked_size(self.vm, info.get("memory_actual_size"), "memory_actual_size")
        if usable > total:
            raise VmmReplyError(self.vm, f"memory_actual_size {usable} exceeds RAM {total}")
        return total - usable

    async def set_target(self, balloon_bytes: int) -> None:
        self._check_target(balloon_bytes)
        status, _ = await self._request("PUT", "/api/v1/vm.resize",
                                        {"desired_balloon": balloon_bytes})
        if status not in (200, 204):
            raise DriverError(self.vm, f"vm.resize answered status {status}")

    async def stats(self) -> GuestStats | None:
        if self.has_stats is False:
            return None
        status, body = await self._request("GET", "/api/v1/vm.balloon-stats")
        if status == 404 or (self.has_stats is None and status in (400, 405)):
            self.has_stats = False
            return None
        if status != 200:
            raise DriverError(self.vm, f"vm.balloon-stats answered status {status}")
        self.has_stats = True
        reply = checked_object(self.vm, self._json(body, "vm.balloon-stats"), "balloon stats")
        untrusted = checked_object(self.vm, reply.get("stats"), "balloon stats")
        return checked_stats(self.vm, untrusted.get("free_memory"),
                             untrusted.get("total_memory"), untrusted.get("disk_caches"),
                             untrusted.get("available_memory"), time.time())
