"""Fakes of cloud-hypervisor's and crosvm's balloon control, over real unix sockets.

This machine has neither VMM, so the balloon drivers are tested against these: they speak the
documented wire formats (HTTP/1.1 REST on a stream socket; JSON datagrams on a
``SOCK_SEQPACKET`` socket) and keep a balloon and guest stats in memory. ``raw_reply`` makes
the next reply arbitrary bytes, to test how the drivers treat a hostile or broken VMM;
``requests`` records what the driver sent. The QEMU driver needs no fake: QEMU runs here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from pathlib import Path
from types import TracebackType
from typing import Any, Self

_REASONS = {200: "OK", 204: "No Content", 400: "Bad Request", 404: "Not Found"}


class _Fake:
    def __init__(self) -> None:
        self.balloon = 0
        self.stats: dict[str, Any] | None = None
        self.raw_reply: bytes | None = None
        self.requests: list[Any] = []

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    def _take_raw(self) -> bytes | None:
        raw, self.raw_reply = self.raw_reply, None
        return raw


class FakeCloudHypervisor(_Fake):
    """``--api-socket`` of a VM with ``memory`` bytes of RAM and a balloon device. With
    ``stats`` None the VMM predates ``vm.balloon-stats`` (404)."""

    def __init__(self, socket_path: Path, *, memory: int,
                 stats: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.socket = socket_path
        self.memory = memory
        self.stats = stats
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, str(self.socket))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                method, path, _ = head[0].split(" ", 2)
                length, close = 0, False
                for line in head[1:]:
                    name, _, value = line.partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                    close = close or (name.lower(), value.strip()) == ("connection", "close")
                body = await reader.readexactly(length) if length else b""
                self.requests.append((method, path, body))
                raw = self._take_raw()
                writer.write(raw if raw is not None else self._respond(method, path, body))
                await writer.drain()
                if close:
                    break
        writer.close()

    def _respond(self, method: str, path: str, body: bytes) -> bytes:
        status, reply = 404, None
        if (method, path) == ("GET", "/api/v1/vm.info"):
            status, reply = 200, {
                "config": {"memory": {"size": self.memory, "hotplugged_size": None}},
                "state": "Running", "memory_actual_size": self.memory - self.balloon}
        elif (method, path) == ("PUT", "/api/v1/vm.resize"):
            try:
                desired = json.loads(body)["desired_balloon"]
            except (ValueError, KeyError, TypeError):
                desired = None
            if isinstance(desired, int) and 0 <= desired <= self.memory:
                self.balloon, status = desired, 204
            else:
                status = 400
        elif (method, path) == ("GET", "/api/v1/vm.balloon-stats") and self.stats is not None:
            status, reply = 200, {"balloon_actual": self.balloon, "stats": self.stats}
        payload = b"" if reply is None else json.dumps(reply).encode()
        head = f"HTTP/1.1 {status} {_REASONS[status]}\r\nServer: Cloud Hypervisor API\r\n"
        if status != 204:
            head += f"Content-Length: {len(payload)}\r\nContent-Type: application/json\r\n"
        return head.encode() + b"\r\n" + payload


class FakeCrosvm(_Fake):
    """``crosvm run -s <socket>``'s control socket. With ``stats`` None the guest never
    answers a stats request (the reply never comes, as with a hung guest)."""

    def __init__(self, socket_path: Path, *, stats: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.socket = socket_path
        self.stats = stats
        self._listener: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        listener.bind(str(self.socket))
        listener.listen()
        listener.setblocking(False)
        self._listener = listener
        self._task = asyncio.create_task(self._accept())

    async def stop(self) -> None:
        for task in [self._task, *self._connections]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._listener is not None:
            self._listener.close()

    async def _accept(self) -> None:
        assert self._listener is not None
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self._listener)
            task = asyncio.create_task(self._serve(conn))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)

    async def _serve(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        with conn:
            conn.setblocking(False)
            while datagram := await loop.sock_recv(conn, 1 << 16):
                request = json.loads(datagram)
                self.requests.append(request)
                raw = self._take_raw()
                if raw is not None:
                    await loop.sock_sendall(conn, raw)
                    continue
                reply = self._respond(request)
                if reply is None:
                    await asyncio.Event().wait()  # a guest that never answers
                await loop.sock_sendall(conn, json.dumps(reply).encode())

    def _respond(self, request: Any) -> object:
        command = request.get("BalloonCommand") if isinstance(request, dict) else None
        if command == "Stats":
            if self.stats is None:
                return None
            return {"BalloonStats": {"stats": self.stats, "balloon_actual": self.balloon}}
        if isinstance(command, dict) and isinstance(command.get("Adjust"), dict):
            num_bytes = command["Adjust"].get("num_bytes")
            if isinstance(num_bytes, int) and num_bytes >= 0:
                self.balloon = num_bytes - num_bytes % 4096  # crosvm works in pages
                return "Ok"
        return {"Err": 22}  # EINVAL, as crosvm's SysError serialises
