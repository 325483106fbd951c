"""One VM client's Wayland connection, as the filter sees it: pure logic, no I/O.

Bytes and file descriptors from either side go in (``from_client`` / ``from_server``); what
to send on comes out. The session keeps the connection's object table (id → interface,
version) from the messages themselves — ``new_id`` arguments create, ``wl_display.delete_id``
and destructors of compositor-made objects remove — because that is what says how the next
message on an id is laid out. On the way it hides globals outside the allowlist, refuses binds
to anything not offered, marks every toplevel with the VM, and asks for server-side
decorations. Everything from the client side is hostile: any malformed or out-of-protocol
message raises ``ViolationError`` and the connection is closed. The compositor is trusted, but its
messages are decoded with the same strictness, since they drive the object table.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from vmsilo.protocol.errors import ProtocolError
from vmsilo.wayland import policy
from vmsilo.wayland.protocols import Interface, Message
from vmsilo.wayland.wire import (
    HEADER_SIZE,
    SERVER_ID_START,
    NewId,
    WireError,
    check_size,
    decode_args,
    encode,
    split_header,
)

MAX_OBJECTS = 65536
MAX_QUEUED_FDS = 128
MAX_BUFFERED = 1 << 20
DECORATION_SERVER_SIDE = 2


class ViolationError(ProtocolError):
    """The VM broke the protocol or the policy; its connection is closed."""


@dataclass
class Output:
    """Messages to send, each with the descriptors that go with it (sent, then closed, by
    the I/O layer). Kept per message: a receiver takes at most a few descriptors per read, so
    the sender must not pile many messages' descriptors onto one send."""

    messages: list[tuple[bytes, list[int]]] = field(default_factory=list)

    def add(self, data: bytes | memoryview, fds: list[int]) -> None:
        self.messages.append((bytes(data), fds))

    def close_fds(self) -> None:
        for _, fds in self.messages:
            for fd in fds:
                os.close(fd)


@dataclass
class _Direction:
    who: str  # for messages: "the VM" or "the compositor"
    events: bool  # what this side sends: events (the compositor) or requests (the VM)
    buffer: bytearray = field(default_factory=bytearray)
    fds: deque[int] = field(default_factory=deque)


@dataclass(frozen=True)
class Global:
    interface: str
    version: int


def _decode(message: Message, raw: memoryview, fds: deque[int]) -> tuple[list[int], list[Any]]:
    """Decode a message whose descriptors are at the head of ``fds``; they are taken off the
    queue first, so that they are closed (not leaked) when the message is malformed."""
    taken = [fds.popleft() for _ in range(message.fd_count)]
    try:
        return taken, decode_args(message, raw[HEADER_SIZE:], deque(taken))
    except BaseException:
        for fd in taken:
            os.close(fd)
        raise


class Session:
    def __init__(self, vm: str, tables: dict[str, Interface]) -> None:
        self.vm = vm
        self.tables = tables
        self.objects: dict[int, tuple[Interface, int]] = {1: (tables["wl_display"], 1)}
        self.globals: dict[int, Global] = {}
        self.hidden: set[str] = set()  # interfaces not offered (for the log)
        self.toplevels = 0
        self.messages = 0
        self._client = _Direction("the VM", events=False)
        self._server = _Direction("the compositor", events=True)
        self._broken: str | None = None

    # -- input -------------------------------------------------------------------------------

    def from_client(self, data: bytes, fds: list[int]) -> Output:
        try:
            return self._feed(self._client, data, fds, self._client_message)
        except WireError as exc:
            raise ViolationError(str(exc)) from None

    def from_server(self, data: bytes, fds: list[int]) -> Output:
        try:
            return self._feed(self._server, data, fds, self._server_message)
        except WireError as exc:
            raise ViolationError(f"compositor: {exc}") from None

    def close(self) -> None:
        """Close every descriptor still queued (the connection is going away)."""
        for direction in (self._client, self._server):
            while direction.fds:
                os.close(direction.fds.popleft())

    def _feed(self, direction: _Direction, data: bytes, fds: list[int], handle: Any) -> Output:
        direction.fds.extend(fds)
        if self._broken is not None:
            raise ViolationError(f"the connection was already closed ({self._broken})")
        direction.buffer += data
        if len(direction.fds) > MAX_QUEUED_FDS:
            raise ViolationError(f"{len(direction.fds)} file descriptors queued without messages")
        if len(direction.buffer) > MAX_BUFFERED:
            raise ViolationError("too much unparsed data")
        out = Output()
        # A view of a copy: views of the buffer itself would pin it (a traceback keeping a
        # slice alive made the final resize fail, found by the fuzzer).
        view = memoryview(bytes(direction.buffer))
        pos = 0
        try:
            while len(view) - pos >= HEADER_SIZE:
                object_id, opcode, size = split_header(view, pos)
                check_size(size)
                if len(view) - pos < size:
                    break
                interface, version = self._lookup(object_id, direction.who)
                message = self._message(interface, opcode, direction.events, version,
                                        direction.who)
                if len(direction.fds) < message.fd_count:
                    break  # its file descriptors have not arrived yet
                handle(object_id, opcode, interface, version, message, view[pos:pos + size],
                       direction.fds, out)
                pos += size
                self.messages += 1
        except BaseException as exc:
            out.close_fds()
            self._broken = str(exc) or type(exc).__name__
            raise
        finally:
            del direction.buffer[:pos]
        return out

    # -- common ------------------------------------------------------------------------------

    def _lookup(self, object_id: int, who: str) -> tuple[Interface, int]:
        try:
            return self.objects[object_id]
        except KeyError:
            raise ViolationError(f"{who} used object {object_id}, which does not exist") from None

    def _create(self, new: NewId, interface_name: str | None, version: int, who: str,
                server: bool) -> None:
        name = new.interface if interface_name is None else interface_name
        interface = self.tables.get(name or "")
        if interface is None:
            raise ViolationError(f"{who} created an object of unknown interface {name!r}")
        in_server_range = new.id >= SERVER_ID_START
        if in_server_range != server:
            raise ViolationError(f"{who} created object {new.id} in the other side's id range")
        if not server and new.id in self.objects:
            raise ViolationError(f"{who} created object {new.id}, which already exists")
        if len(self.objects) >= MAX_OBJECTS:
            raise ViolationError(f"more than {MAX_OBJECTS} objects")
        self.objects[new.id] = (interface, version)

    @staticmethod
    def _message(interface: Interface, opcode: int, events: bool, version: int,
                 who: str) -> Message:
        table = interface.events if events else interface.requests
        if opcode >= len(table):
            raise ViolationError(f"{who} sent opcode {opcode} to {interface.name}, which has "
                            f"{len(table)}")
        message = table[opcode]
        if message.since > version:
            raise ViolationError(f"{who} sent {interface.name}.{message.name} (since version "
                            f"{message.since}) on a version {version} object")
        return message

    # -- client → compositor -----------------------------------------------------------------

    def _client_message(self, object_id: int, _opcode: int, interface: Interface,
                        version: int, message: Message, raw: memoryview, fds: deque[int],
                        out: Output) -> None:
        taken, args = _decode(message, raw, fds)
        try:
            self._client_checked(object_id, interface, version, message, args, raw, taken, out)
        except BaseException:
            for fd in taken:
                os.close(fd)
            raise

    def _client_checked(self, object_id: int, interface: Interface, version: int,
                        message: Message, args: list[Any], raw: memoryview, taken: list[int],
                        out: Output) -> None:
        for arg, value in zip(message.args, args, strict=True):
            if arg.type == "object" and value:
                target, _ = self._lookup(value, "the VM")
                if arg.interface is not None and target.name != arg.interface:
                    raise ViolationError(f"{interface.name}.{message.name}: {arg.name} is a "
                                    f"{target.name}, not a {arg.interface}")
        name = f"{interface.name}.{message.name}"
        if name == "wl_registry.bind":
            self._bind(args)
        else:
            for arg, value in zip(message.args, args, strict=True):
                if arg.type == "new_id":
                    self._create(value, arg.interface, version, "the VM", server=False)
        if message.destructor and object_id >= SERVER_ID_START:
            self.objects.pop(object_id, None)  # compositor-made: no delete_id will come
        rewritten = self._rewrite_request(name, args)
        if rewritten is None:
            out.add(raw, taken)
        else:
            data, new_fds = encode(object_id, rewritten[0], rewritten[1], rewritten[2])
            out.add(data, new_fds)
        if name == "xdg_surface.get_toplevel":
            self._mark_new_toplevel(args[0].id, out)

    def _bind(self, args: list[Any]) -> None:
        name, new = args
        offered = self.globals.get(name)
        if offered is None:
            raise ViolationError(f"bind to global {name}, which was not offered")
        if new.interface != offered.interface:
            raise ViolationError(f"bind to global {name} as {new.interface!r}; it is "
                            f"{offered.interface}")
        if not 1 <= new.version <= offered.version:
            raise ViolationError(f"bind to {offered.interface} version {new.version}; offered up "
                            f"to {offered.version}")
        self._create(new, None, new.version, "the VM", server=False)

    def _request(self, interface: str, name: str) -> tuple[int, Message]:
        for opcode, message in enumerate(self.tables[interface].requests):
            if message.name == name:
                return opcode, message
        raise KeyError(f"{interface}.{name}")

    def _rewrite_request(self, name: str,
                         args: list[Any]) -> tuple[int, Message, list[Any]] | None:
        if name == "xdg_toplevel.set_title":
            opcode, message = self._request("xdg_toplevel", "set_title")
            return opcode, message, [policy.window_title(self.vm, args[0])]
        if name == "xdg_toplevel.set_app_id":
            opcode, message = self._request("xdg_toplevel", "set_app_id")
            return opcode, message, [policy.app_id(self.vm, args[0])]
        if name in ("zxdg_toplevel_decoration_v1.set_mode",
                    "zxdg_toplevel_decoration_v1.unset_mode"):
            opcode, message = self._request("zxdg_toplevel_decoration_v1", "set_mode")
            return opcode, message, [DECORATION_SERVER_SIDE]
        return None

    def _mark_new_toplevel(self, toplevel: int, out: Output) -> None:
        """A window is marked from its first frame, even if its program never sets a title."""
        self.toplevels += 1
        for request, value in (("set_title", policy.window_title(self.vm, None)),
                               ("set_app_id", policy.app_id(self.vm, None))):
            opcode, message = self._request("xdg_toplevel", request)
            data, _ = encode(toplevel, opcode, message, [value])
            out.add(data, [])

    # -- compositor → client -----------------------------------------------------------------

    def _server_message(self, object_id: int, opcode: int, interface: Interface,
                        version: int, message: Message, raw: memoryview, fds: deque[int],
                        out: Output) -> None:
        taken, args = _decode(message, raw, fds)
        name = f"{interface.name}.{message.name}"
        for arg, value in zip(message.args, args, strict=True):
            if arg.type == "new_id":
                self._create(value, arg.interface, version, "the compositor", server=True)
        if name == "wl_display.delete_id":
            self.objects.pop(args[0], None)
        elif name == "wl_registry.global":
            self._offer(object_id, opcode, message, args, out)
            return
        elif name == "wl_registry.global_remove" and self.globals.pop(args[0], None) is None:
            return  # a hidden one: the VM never heard of it
        out.add(raw, taken)

    def _offer(self, registry: int, opcode: int, message: Message, args: list[Any],
               out: Output) -> None:
        number, interface_name, version = args
        allowed = policy.ALLOWED_GLOBALS.get(interface_name)
        table = self.tables.get(interface_name)
        if allowed is None or table is None:
            self.hidden.add(interface_name)
            return
        offered = min(version, allowed, table.version)
        if offered < 1:
            return
        self.globals[number] = Global(interface_name, offered)
        data, _ = encode(registry, opcode, message, [number, interface_name, offered])
        out.add(data, [])
