"""The host half of the D-Bus proxy: one per VM, on the desktop user's session bus.

Guest tray items become host StatusNotifierItems (one bus connection each, registered with the
host's StatusNotifierWatcher): title and tooltip carry ``[<vm>]``, icons are the guest's
pixmaps framed in the VM's colour (never a guest-chosen theme icon name, which could borrow a
trusted host icon), and the menu is mirrored as com.canonical.dbusmenu. Activate, scroll,
context-menu and menu clicks go back to the guest. Guest notifications are re-sent to the
host's notification server with ``[<vm>]`` in the app name and summary; the body is plain text
encoded for the server (escaped only if its GetCapabilities has ``body-markup``, so it is
shown literally either way); actions (opaque keys) and closes come back.

Every guest string shown on the host is cleaned first (``wire.one_line``: no newline, control,
bidi or format character, so nothing after "[<vm>] " can start a line of its own that says
"[banking]"; bodies and tooltip texts line by line with ``wire.body_text``, the tooltip text
then escaped as the StatusNotifierItem spec makes it markup).

Everything from the guest passes ``protocol.dbusproxy.decode_from_guest``; a violation closes
this connection (logged with the VM's name; ``host_main`` connects again later). Volume is no
violation: over the rate limits, notifications are dropped and tray updates coalesced (the
latest one per item is applied when the rate allows), counted in the log every
``SHED_LOG_SECONDS``; reading itself is paced so a flood costs bounded CPU.
"""

import asyncio
import contextlib
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
from vmsilo.dbusproxy import sig
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
EARLY_SIGNALS = 64  # signals kept for host ids not known yet, only while a Notify is pending
READ_RATE, READ_BURST = 2000.0, 2000  # frames a second read at most (backpressure, no loss)
TRAY_RATE, TRAY_BURST = 20.0, 100  # tray changes a second applied at most (rest coalesced)
SHED_LOG_SECONDS = 10.0
CAPABILITIES_SECONDS = 30.0  # how long the server's capabilities are believed

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
    def Category(self) -> sig.S:
        return self.props.category

    @dbus_property(access=PropertyAccess.READ)
    def Id(self) -> sig.S:
        return f"vmsilo-{self.proxy.vm}-{self.item}"

    @dbus_property(access=PropertyAccess.READ)
    def Title(self) -> sig.S:
        return self.proxy.label(wire.one_line(self.props.title, wire.MAX_TITLE))

    @dbus_property(access=PropertyAccess.READ)
    def Status(self) -> sig.S:
        return self.props.status

    @dbus_property(access=PropertyAccess.READ)
    def WindowId(self) -> sig.I:
        return 0

    @dbus_property(access=PropertyAccess.READ)
    def IconName(self) -> sig.S:
        return ""  # never a guest-chosen host theme icon

    @dbus_property(access=PropertyAccess.READ)
    def IconPixmap(self) -> sig.PIXMAPS:
        return _pixmaps_wire(self._icons())

    @dbus_property(access=PropertyAccess.READ)
    def ToolTip(self) -> sig.TOOLTIP:
        # The StatusNotifierItem spec lets the tooltip's text carry markup (Plasma renders
        # it): the guest's plain text is escaped for it, the title is plain text.
        title = wire.one_line(self.props.tooltip_title or self.props.title, wire.MAX_TITLE)
        text = wire.body_text(self.props.tooltip_text, wire.MAX_TOOLTIP)
        return ["", [], self.proxy.label(title), wire.notification_body(text, markup=True)]

    @dbus_property(access=PropertyAccess.READ)
    def ItemIsMenu(self) -> sig.B:
        return False

    @dbus_property(access=PropertyAccess.READ)
    def Menu(self) -> sig.O:
        return MENU_PATH if self.props.has_menu else "/NO_DBUSMENU"

    @method()
    def Activate(self, x: sig.I, y: sig.I):
        self.proxy.send(wire.activate(self.item, x, y))

    @method()
    def SecondaryActivate(self, x: sig.I, y: sig.I):
        self.proxy.send(wire.activate(self.item, x, y, secondary=True))

    @method()
    def ContextMenu(self, x: sig.I, y: sig.I):
        self.proxy.send(wire.context_menu(self.item, x, y))

    @method()
    def Scroll(self, delta: sig.I, orientation: sig.S):
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
    def NewStatus(self, status: str) -> sig.S:
        return status


def _menu_props(node: MenuNode) -> dict[str, Variant]:
    props = {"label": Variant("s", wire.one_line(node.label, wire.MAX_LABEL)),
             "enabled": Variant("b", node.enabled),
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
    def GetLayout(self, parent: sig.I, depth: sig.I, names: sig.AS) -> sig.LAYOUT:
        node = _find(self.root, parent) or self.root
        return [self.revision, _layout(node, depth if depth >= 0 else wire.MAX_MENU_DEPTH + 1)]

    @method()
    def GetGroupProperties(self, ids: sig.AI, names: sig.AS) -> sig.GROUP_PROPERTIES:
        found = [(_find(self.root, i), i) for i in ids]
        return [[i, _menu_props(node)] for node, i in found if node is not None]

    @method()
    def GetProperty(self, node_id: sig.I, name: sig.S) -> sig.V:
        node = _find(self.root, node_id)
        props = _menu_props(node) if node is not None else {}
        return props.get(name, Variant("s", ""))

    @method()
    def Event(self, node_id: sig.I, event: sig.S, data: sig.V, timestamp: sig.U):
        if event == "clicked" and _find(self.root, node_id) is not None:
            self.proxy.send(wire.menu_event(self.item, node_id, "clicked"))

    @method()
    def EventGroup(self, events: sig.EVENTS) -> sig.AI:
        for node_id, event, data, timestamp in events:
            self.Event(node_id, event, data, timestamp)
        return []

    @method()
    def AboutToShow(self, node_id: sig.I) -> sig.B:
        return False

    @method()
    def AboutToShowGroup(self, ids: sig.AI) -> sig.AIAI:
        return [[], []]

    @dbus_property(access=PropertyAccess.READ)
    def Version(self) -> sig.U:
        return 3

    @dbus_property(access=PropertyAccess.READ)
    def TextDirection(self) -> sig.S:
        return "ltr"

    @dbus_property(access=PropertyAccess.READ)
    def Status(self) -> sig.S:
        return "normal"

    @dbus_property(access=PropertyAccess.READ)
    def IconThemePath(self) -> sig.AS:
        return []

    @signal()
    def LayoutUpdated(self, revision: int, parent: int) -> sig.UI:
        return [revision, parent]


@dataclass
class _Item:
    bus: MessageBus
    service: TrayItem
    menu: MirroredMenu
    name: str


@dataclass
class Shed:
    """What was shed since the last log line: notifications dropped, tray changes coalesced
    (superseded by a later one before they were applied)."""

    notifications: int = 0
    tray: int = 0
    since: float = 0.0

    def any(self) -> bool:
        return bool(self.notifications or self.tray)


@dataclass
class HostProxy:
    vm: str
    colour: tuple[int, int, int]
    bus_address: str
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    tray: bool = True
    notifications: bool = True
    rate: wire.RateLimit = field(default_factory=wire.RateLimit)  # notifications
    tray_rate: wire.RateLimit = field(
        default_factory=lambda: wire.RateLimit(TRAY_RATE, TRAY_BURST))
    read_rate: wire.RateLimit = field(
        default_factory=lambda: wire.RateLimit(READ_RATE, READ_BURST))
    items: dict[str, _Item] = field(default_factory=dict)
    host_ids: dict[int, int] = field(default_factory=dict)  # guest notification id -> host id
    guest_ids: dict[int, int] = field(default_factory=dict)
    early: dict[int, list[Any]] = field(default_factory=dict)  # signals before their id
    shed: Shed = field(default_factory=Shed)
    _bus: MessageBus | None = None
    _counter: int = 0
    _pending_notify: int = 0
    _markup: tuple[float, bool] | None = None  # (when asked, body-markup?)
    # Tray changes over the rate, latest per item, applied by _flush_tray.
    _deferred: dict[str, ItemUpdate] = field(default_factory=dict)
    _deferred_menus: dict[str, MenuLayout] = field(default_factory=dict)
    _flush: asyncio.Task[None] | None = None
    violation: str | None = None

    def label(self, text: str) -> str:
        return f"[{self.vm}] {text}" if text else f"[{self.vm}]"

    def send(self, message: dict[str, Any]) -> None:
        if not self.writer.is_closing():
            self.writer.write(wire.encode(message))

    async def run(self) -> None:
        """Serve until the guest disconnects or breaks the protocol."""
        self._bus = await MessageBus(bus_address=self.bus_address).connect()
        self.shed.since = time.monotonic()
        if self.notifications:
            self._bus.add_message_handler(self._on_host_signal)
            await self._add_match(f"type='signal',sender='{NOTIFICATIONS}',"
                                  f"interface='{NOTIFICATIONS}'")
        try:
            while True:
                try:
                    frame = await wire.read_frame(self.reader)
                except asyncio.IncompleteReadError as exc:
                    if exc.partial:  # cut off inside a frame
                        raise ProtocolViolation("the guest hung up inside a frame") from None
                    return  # the guest went away
                await self._handle(wire.decode_from_guest(frame))
                self._log_shed(time.monotonic())
                # Pacing the reads pushes back on the guest through the stream (it waits to
                # write): a flood costs this process bounded CPU, and nothing is lost by it.
                pause = self.read_rate.wait(time.monotonic())
                if pause:
                    await asyncio.sleep(pause)
                self.read_rate.allow(time.monotonic())
        except ProtocolViolation as exc:
            self.violation = str(exc)
            log.warning("VM %s: D-Bus proxy: protocol violation, disconnecting: %s", self.vm,
                        exc)
        finally:
            await self.close()

    async def close(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        self._log_shed(time.monotonic(), force=True)
        for item in list(self.items.values()):
            item.bus.disconnect()
        self.items.clear()
        if self._bus is not None:
            self._bus.disconnect()
            self._bus = None
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()

    def _log_shed(self, now: float, *, force: bool = False) -> None:
        if self.shed.any() and (force or now - self.shed.since >= SHED_LOG_SECONDS):
            log.warning("VM %s: D-Bus proxy: over the rate limit for %.0f s: dropped %d "
                        "notifications, coalesced %d tray updates", self.vm,
                        now - self.shed.since, self.shed.notifications, self.shed.tray)
            self.shed = Shed(since=now)
        elif not self.shed.any():
            self.shed.since = now

    async def _add_match(self, rule: str) -> None:
        assert self._bus is not None
        await bus_calls.add_match(self._bus, rule)

    # -- from the guest ----------------------------------------------------------------------

    async def _handle(self, message: wire.FromGuest) -> None:
        if isinstance(message, ItemAdd | ItemUpdate | ItemRemove | MenuLayout):
            if self.tray:
                await self._tray(message)
        elif self.notifications:
            if not self.rate.allow(time.monotonic()):
                self.shed.notifications += 1
            elif isinstance(message, Notify):
                await self._notify(message)
            elif isinstance(message, NotifyClose):
                await self._close_notification(message.nid)

    async def _tray(self, message: ItemAdd | ItemUpdate | ItemRemove | MenuLayout) -> None:
        """Apply a tray change, or keep it for _flush_tray when over the tray rate.

        Adding and removing are always applied (the host's items must match the guest's, or a
        later update would name an unknown item); they are paced by taking a token, waiting
        for it if need be. Updates and menus over the rate wait, latest per item."""
        if isinstance(message, ItemAdd | ItemRemove):
            self._drop_deferred(message.item)
            pause = self.tray_rate.wait(time.monotonic())
            if pause:
                await asyncio.sleep(pause)
            self.tray_rate.allow(time.monotonic())
            await self._apply_tray(message)
            return
        if message.item not in self.items:  # checked now, not when applied
            what = "menu" if isinstance(message, MenuLayout) else "update"
            raise ProtocolViolation(f"{what} of unknown item {message.item!r}")
        pending: dict[str, Any] = (
            self._deferred_menus if isinstance(message, MenuLayout) else self._deferred)
        if message.item not in pending and self.tray_rate.allow(time.monotonic()):
            await self._apply_tray(message)
            return
        if message.item in pending:
            self.shed.tray += 1
        pending[message.item] = message
        if self._flush is None or self._flush.done():
            self._flush = asyncio.create_task(self._flush_tray())

    def _drop_deferred(self, item: str) -> None:
        if self._deferred.pop(item, None) is not None:
            self.shed.tray += 1
        if self._deferred_menus.pop(item, None) is not None:
            self.shed.tray += 1

    async def _flush_tray(self) -> None:
        """Apply the deferred tray changes one per token, oldest item first."""
        while self._deferred or self._deferred_menus:
            await asyncio.sleep(max(self.tray_rate.wait(time.monotonic()), 0.001))
            if not self.tray_rate.allow(time.monotonic()):
                continue
            pending: dict[str, Any] = self._deferred or self._deferred_menus
            item = next(iter(pending))
            message = pending.pop(item)
            if item in self.items:
                await self._apply_tray(message)

    async def _apply_tray(self, message: ItemAdd | ItemUpdate | ItemRemove | MenuLayout) -> None:
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

    async def _server_markup(self) -> bool:
        """Whether the host's notification server interprets body markup (its
        GetCapabilities lists ``body-markup``), asked again every CAPABILITIES_SECONDS (the
        desktop may restart its server). If it cannot be asked, markup is assumed: the
        escaped form is then shown literally at worst, never interpreted."""
        now = time.monotonic()
        if self._markup is None or now - self._markup[0] > CAPABILITIES_SECONDS:
            try:
                (capabilities,) = await self._call(NOTIFICATIONS, NOTIFICATIONS_PATH,
                                                   NOTIFICATIONS, "GetCapabilities", "", [])
                markup = isinstance(capabilities, list) and "body-markup" in capabilities
            except (DBusError, ValueError):
                markup = True
            self._markup = (now, markup)
        return self._markup[1]

    async def _notify(self, message: Notify) -> None:
        actions: list[str] = []
        for key, label in message.actions:
            actions += [key, wire.one_line(label, wire.MAX_LABEL)]
        replaces = self.host_ids.get(message.nid, 0)
        body = wire.notification_body(wire.body_text(message.body),
                                      markup=await self._server_markup())
        self._pending_notify += 1
        try:
            (host_id,) = await self._call(
                NOTIFICATIONS, NOTIFICATIONS_PATH, NOTIFICATIONS, "Notify", "susssasa{sv}i",
                [self.label(wire.one_line(message.app, wire.MAX_APP)), replaces, "",
                 self.label(wire.one_line(message.summary, wire.MAX_SUMMARY)), body, actions,
                 {"urgency": Variant("y", message.urgency)}, message.timeout_ms])
        except (DBusError, ValueError) as exc:
            log.info("VM %s: host notification server refused: %s", self.vm, exc)
            return
        finally:
            self._pending_notify -= 1
        if not isinstance(host_id, int):
            return
        self.host_ids[message.nid] = host_id
        self.guest_ids[host_id] = message.nid
        for early in self.early.pop(host_id, []):
            self._forward_signal(early, host_id, message.nid)
        if not self._pending_notify:
            # The server's signals for an id come before its reply to the Notify that made it
            # (one sender, one connection: D-Bus keeps the order). With no call of ours
            # pending, what is still kept belongs to other programs' notifications.
            self.early.clear()

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
            # The server may signal before our Notify call's reply has been handled: while a
            # call is pending, keep the latest few such signals (oldest dropped first) until
            # the id is known (see _notify). Other programs' ids never fill it for good.
            if isinstance(host_id, int) and self._pending_notify:
                if host_id not in self.early and len(self.early) >= EARLY_SIGNALS:
                    del self.early[next(iter(self.early))]
                signals = self.early.setdefault(host_id, [])
                if len(signals) < 4:
                    signals.append(msg)
            return False
        self._forward_signal(msg, host_id, nid)
        return False

    def _forward_signal(self, msg: Any, host_id: int, nid: int) -> None:
        if msg.member == "ActionInvoked" and len(msg.body) == 2:
            key = msg.body[1]
            if wire.is_action_key(key):
                self.send(wire.action_invoked(nid, key))
        elif msg.member == "NotificationClosed" and len(msg.body) == 2:
            reason = msg.body[1]
            self.send(wire.closed(nid, reason if isinstance(reason, int)
                                  and 1 <= reason <= 4 else 4))
            self.guest_ids.pop(host_id, None)
            self.host_ids.pop(nid, None)
