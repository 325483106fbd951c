"""The host half of the D-Bus proxy: one per VM, on the desktop user's session bus.

Guest tray items become host StatusNotifierItems (one bus connection each, registered with the
host's StatusNotifierWatcher): title and tooltip carry ``[<vm>]``, icons are the guest's
pixmaps framed in the VM's colour (never a guest-chosen theme icon name, which could borrow a
trusted host icon), and the menu is mirrored as com.canonical.dbusmenu. Activate, scroll,
context-menu and menu clicks go back to the guest. Guest notifications are re-sent to the
host's notification server with ``[<vm>]`` in the app name and summary and the body's markup
escaped (shown literally, never interpreted); actions and closes come back.

Everything from the guest passes ``protocol.dbusproxy.decode_from_guest`` and a rate limit
first; any violation closes this VM's proxy (logged with the VM's name).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dbus_next.aio.message_bus import MessageBus
from dbus_next.constants import PropertyAccess
from dbus_next.errors import DBusError
from dbus_next.service import ServiceInterface, dbus_property, method, signal
from dbus_next.signature import Variant

from vmsilo.dbusproxy import bus as bus_calls
from vmsilo.protocol import dbusproxy as wire
from vmsilo.protocol.dbusproxy import (
    ItemAdd,
    ItemProps,
    ItemRemove,
    ItemUpdate,
    MenuLayout,
    MenuNode,
    Notify,
    NotifyClose,
    Pixmap,
    ProtocolViolation,
)

log = logging.getLogger(__name__)

WATCHER = "org.kde.StatusNotifierWatcher"
WATCHER_PATH = "/StatusNotifierWatcher"
NOTIFICATIONS = "org.freedesktop.Notifications"
NOTIFICATIONS_PATH = "/org/freedesktop/Notifications"
ITEM_PATH = "/StatusNotifierItem"
MENU_PATH = "/MenuBar"
PLACEHOLDER_SIDE = 22
EARLY_SIGNALS = 64

Send = Callable[[dict[str, Any]], None]


def framed(pixmap: Pixmap, rgb: tuple[int, int, int]) -> Pixmap:
    """The pixmap with an opaque border in the VM's colour (1/16 of its side, at least 1px)."""
    width, height = pixmap.width, pixmap.height
    border = max(1, min(width, height) // 16)
    data = bytearray(pixmap.argb)
    colour = bytes((255, *rgb))
    for y in range(height):
        edge_row = y < border or y >= height - border
        for x in range(width):
            if edge_row or x < border or x >= width - border:
                offset = (y * width + x) * 4
                data[offset : offset + 4] = colour
    return Pixmap(width, height, bytes(data))


def placeholder(rgb: tuple[int, int, int]) -> Pixmap:
    """For an item with no pixmap: a frame in the VM's colour around a faint fill of it."""
    side = PLACEHOLDER_SIDE
    fill = bytes((96, *rgb)) * (side * side)
    return framed(Pixmap(side, side, fill), rgb)


def _pixmaps_wire(pixmaps: tuple[Pixmap, ...]) -> list[list[Any]]:
    return [[p.width, p.height, p.argb] for p in pixmaps]


class TrayItem(ServiceInterface):
    """A guest tray item as the host sees it."""

    def __init__(self, proxy: "HostProxy", item: str, props: ItemProps) -> None:
        super().__init__("org.kde.StatusNotifierItem")
        self.proxy = proxy
        self.item = item
        self.props = props

    def update(self, props: ItemProps) -> None:
        old, self.props = self.props, props
        if old.title != props.title:
            self.NewTitle()
        if old.pixmaps != props.pixmaps:
            self.NewIcon()
        if (old.tooltip_title, old.tooltip_text) != (props.tooltip_title, props.tooltip_text):
            self.NewToolTip()
        if old.status != props.status:
            self.NewStatus(props.status)

    def _icons(self) -> tuple[Pixmap, ...]:
        rgb = self.proxy.colour
        return tuple(framed(p, rgb) for p in self.props.pixmaps) or (placeholder(rgb),)

    @dbus_property(access=PropertyAccess.READ)
    def Category(self) -> "s":
        return self.props.category

    @dbus_property(access=PropertyAccess.READ)
    def Id(self) -> "s":
        return f"vmsilo-{self.proxy.vm}-{self.item}"

    @dbus_property(access=PropertyAccess.READ)
    def Title(self) -> "s":
        return self.proxy.label(self.props.title)

    @dbus_property(access=PropertyAccess.READ)
    def Status(self) -> "s":
        return self.props.status

    @dbus_property(access=PropertyAccess.READ)
    def WindowId(self) -> "i":
        return 0

    @dbus_property(access=PropertyAccess.READ)
    def IconName(self) -> "s":
        return ""  # never a guest-chosen host theme icon

    @dbus_property(access=PropertyAccess.READ)
    def IconPixmap(self) -> "a(iiay)":
        return _pixmaps_wire(self._icons())

    @dbus_property(access=PropertyAccess.READ)
    def ToolTip(self) -> "(sa(iiay)ss)":
        title = self.props.tooltip_title or self.props.title
        return ["", [], self.proxy.label(title), self.props.tooltip_text]

    @dbus_property(access=PropertyAccess.READ)
    def ItemIsMenu(self) -> "b":
        return False

    @dbus_property(access=PropertyAccess.READ)
    def Menu(self) -> "o":
        return MENU_PATH if self.props.has_menu else "/NO_DBUSMENU"

    @method()
    def Activate(self, x: "i", y: "i"):
        self.proxy.send(wire.activate(self.item, x, y))

    @method()
    def SecondaryActivate(self, x: "i", y: "i"):
        self.proxy.send(wire.activate(self.item, x, y, secondary=True))

    @method()
    def ContextMenu(self, x: "i", y: "i"):
        self.proxy.send(wire.context_menu(self.item, x, y))

    @method()
    def Scroll(self, delta: "i", orientation: "s"):
        direction = orientation.lower() if orientation.lower() in wire.ORIENTATIONS else "vertical"
        self.proxy.send(wire.scroll(self.item, delta, direction))

    @signal()
    def NewTitle(self):
        pass

    @signal()
    def NewIcon(self):
        pass

    @signal()
    def NewToolTip(self):
        pass

    @signal()
    def NewStatus(self, status: str) -> "s":
        return status


def _menu_props(node: MenuNode) -> dict[str, Variant]:
    props = {"label": Variant("s", node.label), "enabled": Variant("b", node.enabled),
             "visible": Variant("b", node.visible)}  # fmt: skip
    if node.type == "separator":
        props["type"] = Variant("s", "separator")
    if node.toggle_type:
        props["toggle-type"] = Variant("s", node.toggle_type)
        props["toggle-state"] = Variant("i", node.toggle_state)
    if node.children:
        props["children-display"] = Variant("s", "submenu")
    return props


def _layout(node: MenuNode, depth: int) -> list[Any]:
    children = [] if depth == 0 else [
        Variant("(ia{sv}av)", _layout(child, depth - 1)) for child in node.children]
    return [node.id, _menu_props(node), children]


def _find(node: MenuNode, wanted: int) -> MenuNode | None:
    if node.id == wanted:
        return node
    for child in node.children:
        found = _find(child, wanted)
        if found is not None:
            return found
    return None


class MirroredMenu(ServiceInterface):
    """com.canonical.dbusmenu over the guest's last menu layout."""

    def __init__(self, proxy: "HostProxy", item: str) -> None:
        super().__init__("com.canonical.dbusmenu")
        self.proxy = proxy
        self.item = item
        self.root = MenuNode(0)
        self.revision = 0

    def replace(self, root: MenuNode) -> None:
        self.root = root
        self.revision += 1
        self.LayoutUpdated(self.revision, 0)

    @method()
    def GetLayout(self, parent: "i", depth: "i", names: "as") -> "u(ia{sv}av)":
        node = _find(self.root, parent) or self.root
        return [self.revision, _layout(node, depth if depth >= 0 else wire.MAX_MENU_DEPTH + 1)]

    @method()
    def GetGroupProperties(self, ids: "ai", names: "as") -> "a(ia{sv})":
        found = [(_find(self.root, i), i) for i in ids]
        return [[i, _menu_props(node)] for node, i in found if node is not None]

    @method()
    def GetProperty(self, node_id: "i", name: "s") -> "v":
        node = _find(self.root, node_id)
        props = _menu_props(node) if node is not None else {}
        return props.get(name, Variant("s", ""))

    @method()
    def Event(self, node_id: "i", event: "s", data: "v", timestamp: "u"):
        if event == "clicked" and _find(self.root, node_id) is not None:
            self.proxy.send(wire.menu_event(self.item, node_id, "clicked"))

    @method()
    def EventGroup(self, events: "a(isvu)") -> "ai":
        for node_id, event, data, timestamp in events:
            self.Event(node_id, event, data, timestamp)
        return []

    @method()
    def AboutToShow(self, node_id: "i") -> "b":
        return False

    @method()
    def AboutToShowGroup(self, ids: "ai") -> "aiai":
        return [[], []]

    @dbus_property(access=PropertyAccess.READ)
    def Version(self) -> "u":
        return 3

    @dbus_property(access=PropertyAccess.READ)
    def TextDirection(self) -> "s":
        return "ltr"

    @dbus_property(access=PropertyAccess.READ)
    def Status(self) -> "s":
        return "normal"

    @dbus_property(access=PropertyAccess.READ)
    def IconThemePath(self) -> "as":
        return []

    @signal()
    def LayoutUpdated(self, revision: int, parent: int) -> "ui":
        return [revision, parent]


@dataclass
class _Item:
    bus: MessageBus
    service: TrayItem
    menu: MirroredMenu
    name: str


@dataclass
class HostProxy:
    vm: str
    colour: tuple[int, int, int]
    bus_address: str
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    tray: bool = True
    notifications: bool = True
    rate: wire.RateLimit = field(default_factory=wire.RateLimit)
    items: dict[str, _Item] = field(default_factory=dict)
    host_ids: dict[int, int] = field(default_factory=dict)  # guest notification id -> host id
    guest_ids: dict[int, int] = field(default_factory=dict)
    early: dict[int, list[Any]] = field(default_factory=dict)  # signals before their id
    _bus: MessageBus | None = None
    _counter: int = 0
    violation: str | None = None

    def label(self, text: str) -> str:
        return f"[{self.vm}] {text}" if text else f"[{self.vm}]"

    def send(self, message: dict[str, Any]) -> None:
        if not self.writer.is_closing():
            self.writer.write(wire.encode(message))

    async def run(self) -> None:
        """Serve until the guest disconnects or breaks the protocol."""
        self._bus = await MessageBus(bus_address=self.bus_address).connect()
        if self.notifications:
            self._bus.add_message_handler(self._on_host_signal)
            await self._add_match(f"type='signal',interface='{NOTIFICATIONS}'")
        try:
            while True:
                try:
                    frame = await wire.read_frame(self.reader)
                except asyncio.IncompleteReadError as exc:
                    if exc.partial:  # cut off inside a frame
                        raise ProtocolViolation("the guest hung up inside a frame") from None
                    return  # the guest went away
                if not self.rate.allow(time.monotonic()):
                    raise ProtocolViolation("more messages than the rate limit allows")
                await self._handle(wire.decode_from_guest(frame))
        except ProtocolViolation as exc:
            self.violation = str(exc)
            log.warning("VM %s: D-Bus proxy: protocol violation, disconnecting: %s", self.vm,
                        exc)
        finally:
            await self.close()

    async def close(self) -> None:
        for item in list(self.items.values()):
            item.bus.disconnect()
        self.items.clear()
        if self._bus is not None:
            self._bus.disconnect()
            self._bus = None
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()

    async def _add_match(self, rule: str) -> None:
        assert self._bus is not None
        await bus_calls.add_match(self._bus, rule)

    # -- from the guest ----------------------------------------------------------------------

    async def _handle(self, message: wire.FromGuest) -> None:
        if isinstance(message, ItemAdd | ItemUpdate | ItemRemove | MenuLayout):
            if not self.tray:
                return
            if isinstance(message, ItemRemove):
                gone = self.items.pop(message.item, None)
                if gone is not None:
                    gone.bus.disconnect()
            elif isinstance(message, MenuLayout):
                item = self.items.get(message.item)
                if item is None:
                    raise ProtocolViolation(f"menu for unknown item {message.item!r}")
                item.menu.replace(message.root)
            elif message.item in self.items:
                self.items[message.item].service.update(message.props)
            elif isinstance(message, ItemUpdate):
                raise ProtocolViolation(f"update of unknown item {message.item!r}")
            else:
                await self._add_item(message)
        elif self.notifications:
            if isinstance(message, Notify):
                await self._notify(message)
            elif isinstance(message, NotifyClose):
                await self._close_notification(message.nid)

    async def _add_item(self, message: ItemAdd) -> None:
        if len(self.items) >= wire.MAX_ITEMS:
            raise ProtocolViolation(f"more than {wire.MAX_ITEMS} tray items")
        bus = await MessageBus(bus_address=self.bus_address).connect()
        service = TrayItem(self, message.item, message.props)
        menu = MirroredMenu(self, message.item)
        bus.export(ITEM_PATH, service)
        bus.export(MENU_PATH, menu)
        self._counter += 1
        name = f"org.kde.StatusNotifierItem-{os.getpid()}-{self._counter}"
        await bus.request_name(name)
        self.items[message.item] = _Item(bus, service, menu, name)
        with contextlib.suppress(DBusError):
            await self._call(WATCHER, WATCHER_PATH, WATCHER, "RegisterStatusNotifierItem",
                             "s", [name])

    async def _call(self, destination: str, path: str, interface: str, member: str,
                    signature: str, body: list[Any]) -> list[Any]:
        assert self._bus is not None
        return await bus_calls.call(self._bus, destination, path, interface, member,
                                    signature, body)

    async def _notify(self, message: Notify) -> None:
        actions: list[str] = []
        for key, label in message.actions:
            actions += [key, label]
        replaces = self.host_ids.get(message.nid, 0)
        try:
            (host_id,) = await self._call(
                NOTIFICATIONS, NOTIFICATIONS_PATH, NOTIFICATIONS, "Notify", "susssasa{sv}i",
                [self.label(message.app), replaces, "", self.label(message.summary),
                 html.escape(message.body, quote=False), actions,
                 {"urgency": Variant("y", message.urgency)}, message.timeout_ms])
        except DBusError as exc:
            log.info("VM %s: host notification server refused: %s", self.vm, exc)
            return
        self.host_ids[message.nid] = host_id
        self.guest_ids[host_id] = message.nid
        for early in self.early.pop(host_id, []):
            self._forward_signal(early, host_id, message.nid)

    async def _close_notification(self, nid: int) -> None:
        host_id = self.host_ids.get(nid)
        if host_id is not None:
            with contextlib.suppress(DBusError):
                await self._call(NOTIFICATIONS, NOTIFICATIONS_PATH, NOTIFICATIONS,
                                 "CloseNotification", "u", [host_id])

    # -- from the host's notification server ---------------------------------------------------

    def _on_host_signal(self, msg: Any) -> bool:
        if msg.interface != NOTIFICATIONS or not msg.body:
            return False
        host_id = msg.body[0]
        nid = self.guest_ids.get(host_id)
        if nid is None:
            # The server may signal before our Notify call's reply has been handled: keep a
            # few such signals until the id is known (see _notify).
            if isinstance(host_id, int) and len(self.early) < EARLY_SIGNALS:
                self.early.setdefault(host_id, []).append(msg)
            return False
        self._forward_signal(msg, host_id, nid)
        return False

    def _forward_signal(self, msg: Any, host_id: int, nid: int) -> None:
        if msg.member == "ActionInvoked" and len(msg.body) == 2:
            key = str(msg.body[1])
            if wire.ID_RE.match(key):
                self.send(wire.action_invoked(nid, key))
        elif msg.member == "NotificationClosed" and len(msg.body) == 2:
            self.send(wire.closed(nid, int(msg.body[1]) if 1 <= int(msg.body[1]) <= 4 else 4))
            self.guest_ids.pop(host_id, None)
            self.host_ids.pop(nid, None)
