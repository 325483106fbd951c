"""crosvm's balloon over its control socket.

The socket is ``AF_UNIX``/``SOCK_SEQPACKET``: one JSON request per datagram, one JSON reply,
in serde's external tagging. ``{"BalloonCommand":"Stats"}`` answers
``{"BalloonStats":{"stats":{...},"balloon_actual":n}}``; ``{"BalloonCommand":{"Adjust":
{"num_bytes":n,"wait_for_success":false}}}`` answers ``"Ok"`` (older crosvm ignores the extra
field). crosvm asks the guest for stats on each request, so a reply is fresh and stamped with
our clock; a guest that does not answer shows up as a timeout. One connection per request, as
the ``crosvm`` CLI does.
"""

from __future__ import annotations

import asyncio
import json
import socket
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


class CrosvmBalloon(BalloonDriver):
    def __init__(self, vm: str, socket_path: Path, *, timeout: float = 5.0) -> None:
        super().__init__(vm)
        self.socket = socket_path
        self.timeout = timeout

    async def _request(self, request: object) -> object:
        try:
            untrusted_reply = await asyncio.wait_for(self._exchange(request), self.timeout)
        except (OSError, TimeoutError) as exc:
            raise DriverError(self.vm, f"control socket {self.socket}: "
                              f"{str(exc) or 'no reply in time'}") from exc
        if len(untrusted_reply) > MAX_REPLY:
            raise VmmReplyError(self.vm, "control reply is too large")
        try:
            return json.loads(untrusted_reply)
        except (ValueError, UnicodeDecodeError) as exc:
            raise VmmReplyError(self.vm, "control reply is not JSON") from exc

    async def _exchange(self, request: object) -> bytes:
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
            sock.setblocking(False)
            await loop.sock_connect(sock, str(self.socket))
            await loop.sock_sendall(sock, json.dumps(request).encode())
            # One byte more than allowed, so that an oversized datagram is noticed, not cut.
            return await loop.sock_recv(sock, MAX_REPLY + 1)

    def _refused(self, reply: object) -> DriverError | None:
        if isinstance(reply, dict) and "Err" in reply:
            return DriverError(self.vm, f"crosvm refused: {reply['Err']!r:.80}")
        return None

    async def _balloon_stats(self) -> tuple[int, dict[str, object]]:
        reply = await self._request({"BalloonCommand": "Stats"})
        if (refusal := self._refused(reply)) is not None:
            raise refusal
        outer = checked_object(self.vm, reply, "stats reply")
        body = checked_object(self.vm, outer.get("BalloonStats"), "stats reply BalloonStats")
        actual = checked_size(self.vm, body.get("balloon_actual"), "balloon_actual")
        return actual, dict(checked_object(self.vm, body.get("stats"), "balloon stats"))

    async def actual(self) -> int:
        actual, _ = await self._balloon_stats()
        return actual

    async def set_target(self, balloon_bytes: int) -> None:
        self._check_target(balloon_bytes)
        reply = await self._request({"BalloonCommand": {"Adjust": {
            "num_bytes": balloon_bytes, "wait_for_success": False}}})
        if (refusal := self._refused(reply)) is not None:
            raise refusal
        if reply != "Ok":
            raise VmmReplyError(self.vm, f"balloon adjust reply is {reply!r:.80}")

    async def stats(self) -> GuestStats | None:
        _, untrusted = await self._balloon_stats()
        return checked_stats(self.vm, untrusted.get("free_memory"),
                             untrusted.get("total_memory"), untrusted.get("disk_caches"),
                             untrusted.get("available_memory"), time.time())
