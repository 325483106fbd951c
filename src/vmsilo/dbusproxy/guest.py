"""The guest half of the D-Bus proxy, in the guest user's session: it *is* the session's
StatusNotifierWatcher and notification server, so tray items and notifications of guest
programs come to it; it serializes them to the host half and carries the host's activations,
scrolls, menu clicks, notification actions and closes back to the programs.

Tray items are read with Properties.GetAll and re-read when they signal a change; their
com.canonical.dbusmenu menus with GetLayout (again on LayoutUpdated). Everything sent is cut
to the protocol's limits and cleaned for display here already (``wire.one_line``,
``wire.body_text``), so a well-behaved guest never trips the host's checks.

Floods are absorbed here, before the host has to shed anything: a tray item that signals
changes faster than they can be read is re-read once per burst; an update equal to what the
host already has is not sent; what is sent goes through one outbox, paced below the host
half's limits (``NOTIFY_RATE``/``TRAY_RATE``). Tray changes in the outbox are coalesced per
item (the host gets the latest state); notifications queue up to ``OUTBOX_NOTIFICATIONS``,
the oldest dropped (and counted in the log) past it.

Notification ids are unique among open notifications: ``replaces_id`` replaces only a
notification that is open, else a fresh id is given (as GNOME Shell and dunst do), and fresh
ids skip the ones still open.
"""

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Coroutine
from typing import Any

from dbus_next.aio.message_bus import MessageBus
from dbus_next.constants import MessageType, PropertyAccess
from dbus_next.errors import DBusError
from dbus_next.message import Message
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
)

log = logging.getLogger(__name__)

ITEM_IFACE = "org.kde.StatusNotifierItem"
MENU_IFACE = "com.canonical.dbusmenu"
PROPS_IFACE = "org.freedesktop.DBus.Properties"
ITEM_SIGNALS = ("NewTitle", "NewIcon", "NewToolTip", "NewStatus", "NewAttentionIcon")
# The guest's own pace, below the host half's limits (host.py: 50/s and bursts of 200
# notifications, 20/s and bursts of 100 tray changes), so the host never has to shed.
NOTIFY_RATE, NOTIFY_BURST = 40.0, 100
TRAY_RATE, TRAY_BURST = 10.0, 50
OUTBOX_NOTIFICATIONS = 256
MAX_OPEN_IDS = 4096  # notification ids remembered as open (the oldest forgotten past it)


def _cut(text: object, limit: int) -> str:
    """One line of display text (see ``wire.one_line``); anything not a string is ""."""
    return wire.one_line(text if isinstance(text, str) else "", limit)


def _body(text: object, limit: int) -> str:
    """Display text that may have several lines (see ``wire.body_text``)."""
    return wire.body_text(text if isinstance(text, str) else "", limit)


def _value(props: dict[str, Any], key: str) -> Any:
    item = props.get(key)
    return item.value if isinstance(item, Variant) else item


def item_props(props: dict[str, Any]) -> ItemProps:
    """A StatusNotifierItem's properties, cut to what the protocol allows."""
    pixmaps = []
    for entry in (_value(props, "IconPixmap") or [])[: wire.MAX_PIXMAPS]:
        width, height, data = entry
        if 0 < width <= wire.MAX_ICON_SIDE and 0 < height <= wire.MAX_ICON_SIDE \
                and len(data) == width * height * 4:
            pixmaps.append(Pixmap(width, height, bytes(data)))
    tooltip = _value(props, "ToolTip") or ["", [], "", ""]
    status = _value(props, "Status")
    category = _value(props, "Category")
    menu = _value(props, "Menu")
    return ItemProps(
        title=_cut(_value(props, "Title"), wire.MAX_TITLE),
        tooltip_title=_cut(tooltip[2] if len(tooltip) > 2 else "", wire.MAX_TITLE),
        tooltip_text=_body(tooltip[3] if len(tooltip) > 3 else "", wire.MAX_TOOLTIP),
        status=status if status in wire.STATUSES else "Active",
        category=category if category in wire.CATEGORIES else "ApplicationStatus",
        icon_name=_cut(_value(props, "IconName"), wire.MAX_ID * 2),
        pixmaps=tuple(pixmaps),
        has_menu=isinstance(menu, str) and menu not in ("", "/", "/NO_DBUSMENU"),
    )


def menu_node(layout: list[Any], depth: int = 0, budget: list[int] | None = None) -> MenuNode:
    """A dbusmenu layout ``(ia{sv}av)``, cut to the protocol's depth and size."""
    budget = budget if budget is not None else [wire.MAX_MENU_NODES]
    budget[0] -= 1
    node_id, props, children = layout
    kids: list[MenuNode] = []
    if depth < wire.MAX_MENU_DEPTH:
        for child in children:
            if budget[0] <= 0:
                break
            value = child.value if isinstance(child, Variant) else child
            kids.append(menu_node(value, depth + 1, budget))
    kind = _value(props, "type")
    toggle = _value(props, "toggle-type")
    state = _value(props, "toggle-state")
    return MenuNode(
        id=int(node_id) if 0 <= int(node_id) < 2**31 else 0,
        label=_cut(_value(props, "label"), wire.MAX_LABEL),
        enabled=_value(props, "enabled") is not False,
        visible=_value(props, "visible") is not False,
        type="separator" if kind == "separator" else "standard",
        toggle_type=toggle if toggle in wire.TOGGLE_TYPES else "",
        toggle_state=state if state in (-1, 0, 1) else -1,
        children=tuple(kids),
    )


class Watcher(ServiceInterface):
    def __init__(self, proxy: "GuestProxy") -> None:
        super().__init__("org.kde.StatusNotifierWatcher")
        self.proxy = proxy

    @method()
    def RegisterStatusNotifierItem(self, service: sig.S):
        if not isinstance(service, str):
            return
        sender = self.proxy.current_sender
        self.proxy.spawn(self.proxy.add_item(service, sender))

    @method()
    def RegisterStatusNotifierHost(self, service: sig.S):
        pass

    @dbus_property(access=PropertyAccess.READ)
    def RegisteredStatusNotifierItems(self) -> sig.AS:
        return [f"{bus}{path}" for bus, path in self.proxy.item_addresses.values()]

    @dbus_property(access=PropertyAccess.READ)
    def IsStatusNotifierHostRegistered(self) -> sig.B:
        return True

    @dbus_property(access=PropertyAccess.READ)
    def ProtocolVersion(self) -> sig.I:
        return 0

    @signal()
    def StatusNotifierItemRegistered(self, service: str) -> sig.S:
        return service

    @signal()
    def StatusNotifierItemUnregistered(self, service: str) -> sig.S:
        return service

    @signal()
    def StatusNotifierHostRegistered(self):
        pass


class Notifications(ServiceInterface):
    def __init__(self, proxy: "GuestProxy") -> None:
        super().__init__("org.freedesktop.Notifications")
        self.proxy = proxy
        self.next_id = 1
        self.open: dict[int, None] = {}  # ids of open notifications, oldest first

    def new_id(self, replaces: int) -> int:
        """``replaces`` if that notification is open, else the next id not open (1..2**32-1,
        0 is "none" in the spec)."""
        if replaces and replaces in self.open:
            return replaces
        while True:
            nid = self.next_id
            self.next_id = self.next_id % (2**32 - 1) + 1
            if nid not in self.open:
                break
        self.open[nid] = None
        while len(self.open) > MAX_OPEN_IDS:
            del self.open[next(iter(self.open))]
        return nid

    def closed(self, nid: int) -> None:
        self.open.pop(nid, None)

    @method()
    def Notify(self, app: sig.S, replaces: sig.U, icon: sig.S, summary: sig.S, body: sig.S,
               actions: sig.AS, hints: sig.HINTS, timeout: sig.I) -> sig.U:
        nid = self.new_id(replaces)
        pairs = [(actions[i], actions[i + 1]) for i in range(0, len(actions) - 1, 2)]
        pairs = [(key, _cut(label, wire.MAX_LABEL)) for key, label in pairs
                 if wire.is_action_key(key)]  # fmt: skip
        urgency = hints.get("urgency")
        level = urgency.value if isinstance(urgency, Variant) else 1
        self.proxy.send_typed(Notify(
            nid=nid, app=_cut(app, wire.MAX_APP), summary=_cut(summary, wire.MAX_SUMMARY),
            body=_body(body, wire.MAX_BODY), actions=tuple(pairs[: wire.MAX_ACTIONS]),
            urgency=level if level in (0, 1, 2) else 1,
            timeout_ms=max(-1, min(timeout, wire.MAX_TIMEOUT_MS))))
        return nid

    @method()
    def CloseNotification(self, nid: sig.U):
        if nid in self.open:
            self.proxy.send_typed(NotifyClose(nid))

    @method()
    def GetCapabilities(self) -> sig.AS:
        return ["actions", "body"]

    @method()
    def GetServerInformation(self) -> sig.SSSS:
        return ["vmsilo", "vmsilo", "1", "1.2"]

    @signal()
    def NotificationClosed(self, nid: int, reason: int) -> sig.UU:
        return [nid, reason]

    @signal()
    def ActionInvoked(self, nid: int, key: str) -> sig.US:
        return [nid, key]


class GuestProxy:
    """Owns the watcher and notification names on the guest bus from ``start`` on, whether or
    not the host half is connected; ``serve`` carries one host connection at a time. What
    happens while no host is connected is kept (up to OUTBOX_NOTIFICATIONS notifications;
    tray items are re-announced to each new connection).

    Everything for the host goes through the outbox (``send_typed``), which ``_pump`` sends
    at the guest's pace: tray state per item (``item_state``, ``menus``; the items the host
    has not been told the latest of in ``_dirty``) and a queue of notification messages."""

    def __init__(self, bus_address: str | None, reader: asyncio.StreamReader | None = None,
                 writer: asyncio.StreamWriter | None = None, *,
                 notify_rate: wire.RateLimit | None = None) -> None:
        self.bus_address = bus_address
        self.reader = reader
        self.writer = writer
        self.bus: MessageBus | None = None
        self.item_addresses: dict[str, tuple[str, str]] = {}  # item id -> (bus name, path)
        self.owners: dict[str, str] = {}  # unique bus name -> item id
        self.item_state: dict[str, ItemProps] = {}
        self.menus: dict[str, MenuNode] = {}
        self.notify_rate = notify_rate or wire.RateLimit(NOTIFY_RATE, NOTIFY_BURST)
        self.tray_rate = wire.RateLimit(TRAY_RATE, TRAY_BURST)
        self.outbox: deque[Notify | NotifyClose] = deque()
        self.dropped = 0  # notifications dropped from a full outbox, not yet logged
        # item -> what the host lacks: "props", "menu" (in a set), or None once removed.
        self._dirty: dict[str, set[str] | None] = {}
        self._announced: set[str] = set()  # items the current host connection knows
        self._wake = asyncio.Event()
        self._refreshing: dict[str, bool] = {}  # item -> a change came in during the read
        self.current_sender = ""
        self.notifications: Notifications | None = None
        self._counter = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def backlog(self) -> list[Notify | NotifyClose]:
        """The notification messages not sent yet."""
        return list(self.outbox)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background, keeping a reference until it is done."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def send_typed(self, message: wire.FromGuest) -> None:
        """Put ``message`` in the outbox. A tray change equal to the state the host was last
        given (or will be given) is dropped here; the rest is coalesced per item."""
        if isinstance(message, ItemAdd | ItemUpdate):
            if self.item_state.get(message.item) == message.props:
                return  # unchanged: the host has it, or will get it
            self.item_state[message.item] = message.props
            self._mark(message.item, "props")
        elif isinstance(message, ItemRemove):
            known = message.item in self.item_state
            self.item_state.pop(message.item, None)
            self.menus.pop(message.item, None)
            if known:
                self._dirty[message.item] = None
        elif isinstance(message, MenuLayout):
            if message.item not in self.item_state or self.menus.get(message.item) == message.root:
                return
            self.menus[message.item] = message.root
            self._mark(message.item, "menu")
        else:
            if len(self.outbox) >= OUTBOX_NOTIFICATIONS:
                self.outbox.popleft()
                self.dropped += 1
            self.outbox.append(message)
        self._wake.set()

    def _mark(self, item: str, what: str) -> None:
        pending = self._dirty.get(item)
        if pending is None:
            pending = self._dirty[item] = set()
        pending.add(what)

    def _next_tray(self) -> wire.FromGuest | None:
        """The next tray message to send (the oldest item with news), or None."""
        for item, pending in list(self._dirty.items()):
            if pending is None:  # removed
                del self._dirty[item]
                if item in self._announced:
                    self._announced.discard(item)
                    return ItemRemove(item)
                continue
            if "props" in pending:
                pending.discard("props")
                if not pending:
                    del self._dirty[item]
                if item in self._announced:
                    return ItemUpdate(item, self.item_state[item])
                self._announced.add(item)
                if item in self.menus:
                    self._mark(item, "menu")
                return ItemAdd(item, self.item_state[item])
            del self._dirty[item]
            if item in self._announced and item in self.menus:
                return MenuLayout(item, self.menus[item])
        return None

    async def _pump(self, writer: asyncio.StreamWriter) -> None:
        """Send the outbox to ``writer`` at the guest's pace until it closes."""
        while not writer.is_closing():
            now = time.monotonic()
            sent = False
            if self.outbox and self.notify_rate.allow(now):
                writer.write(wire.encode(wire.to_wire(self.outbox.popleft())))
                sent = True
            if self._dirty and self.tray_rate.allow(now):
                message = self._next_tray()
                if message is not None:
                    writer.write(wire.encode(wire.to_wire(message)))
                    sent = True
            if self.dropped:
                log.warning("dropped %d notifications: more than %d were waiting to be sent",
                            self.dropped, OUTBOX_NOTIFICATIONS)
                self.dropped = 0
            if sent:
                await writer.drain()  # the host reads at its pace: wait for it
                continue
            waits = [self.notify_rate.wait(now)] if self.outbox else []
            waits += [self.tray_rate.wait(now)] if self._dirty else []
            self._wake.clear()
            if waits:
                await asyncio.sleep(max(min(waits), 0.001))
            else:
                await self._wake.wait()

    async def start(self) -> None:
        bus = MessageBus(bus_address=self.bus_address) if self.bus_address else MessageBus()
        self.bus = await bus.connect()
        self.notifications = Notifications(self)
        self.bus.export("/StatusNotifierWatcher", Watcher(self))
        self.bus.export("/org/freedesktop/Notifications", self.notifications)
        self.bus.add_message_handler(self._on_message)
        await self._add_match("type='signal',interface='org.kde.StatusNotifierItem'")
        await self._add_match("type='signal',interface='com.canonical.dbusmenu',"
                              "member='LayoutUpdated'")
        await self._add_match("type='signal',sender='org.freedesktop.DBus',"
                              "member='NameOwnerChanged'")
        await self.bus.request_name("org.kde.StatusNotifierWatcher")
        await self.bus.request_name("org.freedesktop.Notifications")

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Carry one host connection until it closes."""
        if self.writer is not None and self.writer is not writer:
            self.writer.close()  # a new host connection replaces the old one
        self.reader, self.writer = reader, writer
        # The new host learns the current state: every item is news to it.
        self._announced.clear()
        for item in self.item_state:
            self._mark(item, "props")
        for item in [i for i, pending in self._dirty.items() if pending is None]:
            del self._dirty[item]
        pump = asyncio.create_task(self._pump(writer))
        try:
            while True:
                try:
                    message = wire.decode_from_host(await wire.read_frame(reader))
                except (asyncio.IncompleteReadError, wire.ProtocolViolation, OSError):
                    return
                # In the background: a guest program slow to answer must not hold up the host's
                # next message (dbus-next's calls have no timeout).
                self.spawn(self._from_host(message))
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await pump
            if self.writer is writer:
                self.reader, self.writer = None, None
            writer.close()

    async def run(self) -> None:
        """Start and serve the connection given at construction (tests, benchmarks)."""
        await self.start()
        assert self.reader is not None and self.writer is not None
        reader, writer = self.reader, self.writer
        try:
            await self.serve(reader, writer)
        finally:
            if self.bus is not None:
                self.bus.disconnect()

    async def _add_match(self, rule: str) -> None:
        assert self.bus is not None
        await bus_calls.add_match(self.bus, rule)

    async def _call(self, destination: str, path: str, interface: str, member: str,
                    signature: str = "", body: list[Any] | None = None) -> list[Any] | None:
        """The reply's body, or None: a guest program that fails a call (an error reply, as
        libappindicator items give to Activate) or gives an address that is no bus name or
        object path is skipped."""
        assert self.bus is not None
        try:
            return await bus_calls.call(self.bus, destination, path, interface, member,
                                        signature, body)
        except (DBusError, ValueError, TypeError) as exc:
            log.debug("%s.%s on %s %s failed: %s", interface, member, destination, path, exc)
            return None

    def _on_message(self, msg: Message) -> bool:
        if msg.message_type == MessageType.METHOD_CALL:
            self.current_sender = msg.sender or ""
            return False
        if msg.message_type != MessageType.SIGNAL:
            return False
        if msg.member == "NameOwnerChanged" and len(msg.body) == 3 and not msg.body[2]:
            item = self.owners.pop(msg.body[0], None)
            if item is not None:
                self.item_addresses.pop(item, None)
                self.send_typed(ItemRemove(item))
        elif msg.interface == ITEM_IFACE and msg.member in ITEM_SIGNALS:
            item = self.owners.get(msg.sender or "")
            if item is not None:
                if item in self._refreshing:  # one read at a time; one more after it
                    self._refreshing[item] = True
                else:
                    self._refreshing[item] = False
                    self.spawn(self._refresh_while_changing(item))
        elif msg.interface == MENU_IFACE and msg.member == "LayoutUpdated":
            item = self.owners.get(msg.sender or "")
            if item is not None:
                self.spawn(self._refresh_menu(item))
        return False

    async def add_item(self, service: str, sender: str) -> None:
        # "service" is a bus name (then the path is the standard one) or an object path.
        if service.startswith("/"):
            bus_name, path = sender, service
        else:
            bus_name, path = service, "/StatusNotifierItem"
        owner = await self._call(bus_calls.BUS_NAME, bus_calls.BUS_PATH, bus_calls.BUS_NAME,
                                 "GetNameOwner", "s", [bus_name])
        if not owner:
            return
        self._counter += 1
        item = f"item{self._counter}"
        self.item_addresses[item] = (bus_name, path)
        self.owners[owner[0]] = item
        await self._refresh(item, update=False)

    async def _refresh_while_changing(self, item: str) -> None:
        """Read the item's properties again, and again while it signalled changes during a
        read: a burst of signals costs two reads, not one per signal."""
        try:
            while item in self.item_addresses:
                await self._refresh(item, update=True)
                if not self._refreshing.get(item):
                    return
                self._refreshing[item] = False
                await asyncio.sleep(1 / TRAY_RATE)  # no faster than the outbox sends them
        finally:
            self._refreshing.pop(item, None)

    async def _refresh(self, item: str, *, update: bool) -> None:
        if item not in self.item_addresses:  # gone meanwhile
            return
        bus_name, path = self.item_addresses[item]
        reply = await self._call(bus_name, path, PROPS_IFACE, "GetAll", "s", [ITEM_IFACE])
        if reply is None:
            return
        try:
            props = item_props(reply[0])
        except (ValueError, TypeError, IndexError, AttributeError):
            log.info("tray item %s has malformed properties; skipped", bus_name)
            return
        self.send_typed(ItemUpdate(item, props) if update else ItemAdd(item, props))
        if props.has_menu and not update:
            await self._refresh_menu(item)

    async def _refresh_menu(self, item: str) -> None:
        if item not in self.item_addresses:  # gone meanwhile
            return
        bus_name, path = self.item_addresses[item]
        props = await self._call(bus_name, path, PROPS_IFACE, "Get", "ss", [ITEM_IFACE, "Menu"])
        if not props:
            return
        menu_path = props[0].value
        layout = await self._call(bus_name, menu_path, MENU_IFACE, "GetLayout", "iias",
                                  [0, -1, []])
        if layout is not None:
            with contextlib.suppress(ValueError, TypeError, IndexError):
                self.send_typed(MenuLayout(item, menu_node(layout[1])))

    async def _from_host(self, message: wire.FromHost) -> None:
        if message.kind in ("activate", "secondary-activate", "context-menu", "scroll"):
            address = self.item_addresses.get(message.item)
            if address is None:
                return
            member = {"activate": "Activate", "secondary-activate": "SecondaryActivate",
                      "context-menu": "ContextMenu", "scroll": "Scroll"}[message.kind]
            if message.kind == "scroll":
                await self._call(*address, ITEM_IFACE, member, "is",
                                 [message.delta, message.orientation])
            else:
                await self._call(*address, ITEM_IFACE, member, "ii", [message.x, message.y])
        elif message.kind == "menu-event":
            address = self.item_addresses.get(message.item)
            if address is None:
                return
            props = await self._call(*address, PROPS_IFACE, "Get", "ss", [ITEM_IFACE, "Menu"])
            if props:
                await self._call(address[0], props[0].value, MENU_IFACE, "Event", "isvu",
                                 [message.node, message.event, Variant("s", ""), 0])
        elif message.kind == "action" and self.notifications is not None:
            self.notifications.ActionInvoked(message.nid, message.key)
        elif message.kind == "closed" and self.notifications is not None:
            self.notifications.closed(message.nid)
            self.notifications.NotificationClosed(message.nid, message.reason)
