"""The two halves of the D-Bus proxy between two private dbus-daemons standing for the guest's
and the host's session buses, connected through a socket pair as port 5001 would connect them.
On the host bus: a notification server and a StatusNotifierWatcher written here; on the guest
bus: a program that notifies and a tray item with a menu."""

import asyncio
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from dbus_next.aio.message_bus import MessageBus
from dbus_next.constants import MessageType, PropertyAccess
from dbus_next.message import Message
from dbus_next.service import ServiceInterface, dbus_property, method
from dbus_next.service import signal as dbus_signal
from dbus_next.signature import Variant

from tests.support.dbus import start_bus
from vmsilo.dbusproxy import sig
from vmsilo.dbusproxy.guest import GuestProxy
from vmsilo.dbusproxy.host import HostProxy
from vmsilo.protocol import dbusproxy as wire

pytestmark = [
    pytest.mark.allow_subprocess,
    pytest.mark.skipif(shutil.which("dbus-daemon") is None, reason="dbus-daemon is missing"),
]

VM = "work"
COLOUR = (0x34, 0x98, 0xDB)


def _bus(tmp: Path, name: str) -> tuple[subprocess.Popen[bytes], str]:
    return start_bus(tmp / f"{name}.sock")


@pytest.fixture
def buses(tmp_path: Path) -> Iterator[tuple[str, str]]:
    guest, guest_address = _bus(tmp_path, "guest")
    host, host_address = _bus(tmp_path, "host")
    yield guest_address, host_address
    for process in (guest, host):
        process.send_signal(signal.SIGTERM)
        process.wait(10)


class NotificationServer(ServiceInterface):
    def __init__(self) -> None:
        super().__init__("org.freedesktop.Notifications")
        self.received: list[list[Any]] = []
        self.got = asyncio.Event()

    @method()
    def Notify(self, app: sig.S, replaces: sig.U, icon: sig.S, summary: sig.S, body: sig.S,
               actions: sig.AS, hints: sig.HINTS, timeout: sig.I) -> sig.U:
        self.received.append([app, replaces, icon, summary, body, actions, timeout])
        self.got.set()
        return 41 + len(self.received)

    @method()
    def CloseNotification(self, nid: sig.U):
        self.NotificationClosed(nid, 3)

    @dbus_signal()
    def ActionInvoked(self, nid: int, key: str) -> sig.US:
        return [nid, key]

    @dbus_signal()
    def NotificationClosed(self, nid: int, reason: int) -> sig.UU:
        return [nid, reason]


class HostWatcher(ServiceInterface):
    def __init__(self) -> None:
        super().__init__("org.kde.StatusNotifierWatcher")
        self.items: list[str] = []
        self.got = asyncio.Event()

    @method()
    def RegisterStatusNotifierItem(self, service: sig.S):
        self.items.append(service)
        self.got.set()


class GuestItem(ServiceInterface):
    def __init__(self) -> None:
        super().__init__("org.kde.StatusNotifierItem")
        self.activated: list[tuple[int, int]] = []
        self.scrolled: list[tuple[int, str]] = []
        self.got = asyncio.Event()

    @dbus_property(access=PropertyAccess.READ)
    def Title(self) -> sig.S:
        return "Mail"

    @dbus_property(access=PropertyAccess.READ)
    def Status(self) -> sig.S:
        return "Active"

    @dbus_property(access=PropertyAccess.READ)
    def IconName(self) -> sig.S:
        return "security-high"

    @dbus_property(access=PropertyAccess.READ)
    def IconPixmap(self) -> sig.PIXMAPS:
        return [[16, 16, bytes([255, 10, 20, 30]) * 256]]

    @dbus_property(access=PropertyAccess.READ)
    def Menu(self) -> sig.O:
        return "/MenuBar"

    @method()
    def Activate(self, x: sig.I, y: sig.I):
        self.activated.append((x, y))
        self.got.set()

    @method()
    def Scroll(self, delta: sig.I, orientation: sig.S):
        self.scrolled.append((delta, orientation))
        self.got.set()


class GuestMenu(ServiceInterface):
    def __init__(self) -> None:
        super().__init__("com.canonical.dbusmenu")
        self.clicked: list[int] = []
        self.got = asyncio.Event()

    @method()
    def GetLayout(self, parent: sig.I, depth: sig.I, names: sig.AS) -> sig.LAYOUT:
        child = Variant("(ia{sv}av)", [7, {"label": Variant("s", "Check mail")}, []])
        return [1, [0, {}, [child]]]

    @method()
    def Event(self, node: sig.I, event: sig.S, data: sig.V, timestamp: sig.U):
        self.clicked.append(node)
        self.got.set()


@pytest.fixture
async def proxy(buses: tuple[str, str]) -> AsyncIterator[dict[str, Any]]:
    guest_address, host_address = buses
    host_bus = await MessageBus(bus_address=host_address).connect()
    server, watcher = NotificationServer(), HostWatcher()
    host_bus.export("/org/freedesktop/Notifications", server)
    host_bus.export("/StatusNotifierWatcher", watcher)
    await host_bus.request_name("org.freedesktop.Notifications")
    await host_bus.request_name("org.kde.StatusNotifierWatcher")

    a, b = socket.socketpair()
    host_reader, host_writer = await asyncio.open_unix_connection(sock=a)
    guest_reader, guest_writer = await asyncio.open_unix_connection(sock=b)
    host = HostProxy(VM, COLOUR, host_address, host_reader, host_writer)
    guest = GuestProxy(guest_address, guest_reader, guest_writer)
    tasks = [asyncio.create_task(host.run()), asyncio.create_task(guest.run())]
    app_bus = await MessageBus(bus_address=guest_address).connect()
    for _ in range(200):  # the guest half owns its names once it runs
        reply = await app_bus.call(Message(destination="org.freedesktop.DBus",
                                           path="/org/freedesktop/DBus",
                                           interface="org.freedesktop.DBus",
                                           member="NameHasOwner", signature="s",
                                           body=["org.freedesktop.Notifications"]))
        if reply is not None and reply.body[0]:
            break
        await asyncio.sleep(0.02)
    yield {"host_bus": host_bus, "server": server, "watcher": watcher, "app_bus": app_bus,
           "host": host, "guest": guest}
    for task in tasks:
        task.cancel()
    for task in tasks:
        with pytest.raises((asyncio.CancelledError, Exception)):
            await task
    app_bus.disconnect()
    host_bus.disconnect()


async def call(bus: MessageBus, destination: str, path: str, interface: str, member: str,
               signature: str = "", body: list[Any] | None = None) -> list[Any]:
    reply = await bus.call(Message(destination=destination, path=path, interface=interface,
                                   member=member, signature=signature, body=body or []))
    assert reply is not None and reply.message_type == MessageType.METHOD_RETURN, reply.body
    return list(reply.body)


async def test_a_notification_reaches_the_host_and_its_action_comes_back(
    proxy: dict[str, Any],
) -> None:
    app_bus: MessageBus = proxy["app_bus"]
    actions: list[list[Any]] = []
    got_action = asyncio.Event()

    def on_signal(msg: Message) -> bool:
        if msg.member == "ActionInvoked":
            actions.append(list(msg.body))
            got_action.set()
        return False

    app_bus.add_message_handler(on_signal)
    await call(app_bus, "org.freedesktop.DBus", "/org/freedesktop/DBus",
               "org.freedesktop.DBus", "AddMatch", "s", ["type='signal',member='ActionInvoked'"])
    (nid,) = await call(app_bus, "org.freedesktop.Notifications",
                        "/org/freedesktop/Notifications", "org.freedesktop.Notifications",
                        "Notify", "susssasa{sv}i",
                        ["Mailer", 0, "mail", "New mail", "from <b>Bob</b> & co",
                         ["open", "Open"], {}, 5000])
    server: NotificationServer = proxy["server"]
    await asyncio.wait_for(server.got.wait(), 10)
    app, _replaces, icon, summary, body, host_actions, timeout = server.received[0]
    assert app == "[work] Mailer" and summary == "[work] New mail"
    assert body == "from &lt;b&gt;Bob&lt;/b&gt; &amp; co"  # markup shown, never interpreted
    assert icon == "" and host_actions == ["open", "Open"] and timeout == 5000
    server.ActionInvoked(42, "open")
    await asyncio.wait_for(got_action.wait(), 10)
    assert actions == [[nid, "open"]]


async def test_a_tray_item_appears_on_the_host_marked_and_activation_reaches_it(
    proxy: dict[str, Any],
) -> None:
    app_bus: MessageBus = proxy["app_bus"]
    item, menu = GuestItem(), GuestMenu()
    app_bus.export("/StatusNotifierItem", item)
    app_bus.export("/MenuBar", menu)
    await app_bus.request_name("org.kde.StatusNotifierItem-99-1")
    await call(app_bus, "org.kde.StatusNotifierWatcher", "/StatusNotifierWatcher",
               "org.kde.StatusNotifierWatcher", "RegisterStatusNotifierItem", "s",
               ["org.kde.StatusNotifierItem-99-1"])
    watcher: HostWatcher = proxy["watcher"]
    await asyncio.wait_for(watcher.got.wait(), 10)
    (name,) = watcher.items
    host_bus: MessageBus = proxy["host_bus"]
    (props,) = await call(host_bus, name, "/StatusNotifierItem",
                          "org.freedesktop.DBus.Properties", "GetAll", "s",
                          ["org.kde.StatusNotifierItem"])
    assert props["Title"].value == "[work] Mail"
    assert props["IconName"].value == ""  # the guest's theme icon name is not used
    ((width, height, data),) = props["IconPixmap"].value
    assert (width, height) == (16, 16)
    assert data[:4] == bytes([255, *COLOUR])  # the corner is the VM's colour
    middle = (8 * 16 + 8) * 4
    assert data[middle : middle + 4] == bytes([255, 10, 20, 30])  # the icon itself
    await call(host_bus, name, "/StatusNotifierItem", "org.kde.StatusNotifierItem",
               "Activate", "ii", [3, 4])
    await asyncio.wait_for(item.got.wait(), 10)
    assert item.activated == [(3, 4)]
    item.got.clear()
    await call(host_bus, name, "/StatusNotifierItem", "org.kde.StatusNotifierItem",
               "Scroll", "is", [-120, "Horizontal"])
    await asyncio.wait_for(item.got.wait(), 10)
    assert item.scrolled == [(-120, "horizontal")]

    # The menu is mirrored, and a click on the host reaches the guest's menu.
    for _ in range(200):
        (_revision, layout) = await call(host_bus, name, "/MenuBar", "com.canonical.dbusmenu",
                                        "GetLayout", "iias", [0, -1, []])
        if layout[2]:
            break
        await asyncio.sleep(0.02)
    (child,) = layout[2]
    assert child.value[0] == 7 and child.value[1]["label"].value == "Check mail"
    await call(host_bus, name, "/MenuBar", "com.canonical.dbusmenu", "Event", "isvu",
               [7, "clicked", Variant("s", ""), 0])
    await asyncio.wait_for(menu.got.wait(), 10)
    assert menu.clicked == [7]


async def test_a_notification_closed_on_the_host_is_reported_to_the_program(
    proxy: dict[str, Any],
) -> None:
    app_bus: MessageBus = proxy["app_bus"]
    closed: list[list[Any]] = []
    got = asyncio.Event()

    def on_signal(msg: Message) -> bool:
        if msg.member == "NotificationClosed":
            closed.append(list(msg.body))
            got.set()
        return False

    app_bus.add_message_handler(on_signal)
    await call(app_bus, "org.freedesktop.DBus", "/org/freedesktop/DBus",
               "org.freedesktop.DBus", "AddMatch", "s",
               ["type='signal',member='NotificationClosed'"])
    (nid,) = await call(app_bus, "org.freedesktop.Notifications",
                        "/org/freedesktop/Notifications", "org.freedesktop.Notifications",
                        "Notify", "susssasa{sv}i", ["a", 0, "", "s", "b", [], {}, -1])
    server: NotificationServer = proxy["server"]
    await asyncio.wait_for(server.got.wait(), 10)
    # The program closes it: the host's server is asked to, and says it was closed (reason 3).
    await call(app_bus, "org.freedesktop.Notifications", "/org/freedesktop/Notifications",
               "org.freedesktop.Notifications", "CloseNotification", "u", [nid])
    await asyncio.wait_for(got.wait(), 10)
    assert closed == [[nid, 3]]


BAD_FRAMES = [
    b"\x00\x00\x00\x05hello",  # not JSON
    wire.HEADER.pack(wire.MAX_FRAME + 1),  # too long a frame
    wire.encode({"t": "notify", "nid": 1, "summary": "x" * (wire.MAX_SUMMARY + 1)}),
    wire.encode({"t": "item-add", "id": "../../evil", "props": {}}),
    wire.encode({"t": "item-add", "id": "a", "props": {"pixmaps": [{"w": 4096, "h": 4096,
                                                                   "data": ""}]}}),
    wire.encode({"t": "menu", "id": "nosuch", "layout": {"id": 0}}),
    wire.encode({"t": "shell", "cmd": "rm -rf /"}),
]


@pytest.mark.parametrize("frame", BAD_FRAMES)
async def test_malformed_input_disconnects_the_vm(buses: tuple[str, str], frame: bytes) -> None:
    _guest_address, host_address = buses
    a, b = socket.socketpair()
    reader, writer = await asyncio.open_unix_connection(sock=a)
    host = HostProxy(VM, COLOUR, host_address, reader, writer)
    task = asyncio.create_task(host.run())
    b.sendall(frame)
    await asyncio.wait_for(task, 10)  # it never hangs
    assert host.violation is not None
    b.settimeout(5)
    assert b.recv(10) == b""  # and it hung up
    b.close()


async def test_a_flood_disconnects_the_vm(buses: tuple[str, str]) -> None:
    _guest_address, host_address = buses
    a, b = socket.socketpair()
    reader, writer = await asyncio.open_unix_connection(sock=a)
    host = HostProxy(VM, COLOUR, host_address, reader, writer, notifications=False)
    task = asyncio.create_task(host.run())
    frame = wire.encode({"t": "notify-close", "nid": 1})
    b.setblocking(False)
    with pytest.raises(OSError):
        for _ in range(10_000):
            b.send(frame)
            await asyncio.sleep(0)
    await asyncio.wait_for(task, 10)
    assert "rate limit" in str(host.violation)
    os.close(b.detach())


async def test_an_action_signalled_before_the_notify_reply_is_not_lost(
    buses: tuple[str, str],
) -> None:
    # The desktop's server may signal an action before the host half has handled the reply to
    # its Notify call; the signal is kept until the id is known, then forwarded.
    _guest_address, host_address = buses
    a, b = socket.socketpair()
    reader, writer = await asyncio.open_unix_connection(sock=a)
    guest_reader, _guest_writer = await asyncio.open_unix_connection(sock=b)
    host = HostProxy(VM, COLOUR, host_address, reader, writer)

    async def reply_42(*_args: Any) -> list[Any]:
        return [42]

    host._call = reply_42  # type: ignore[method-assign]
    early = Message.new_signal("/org/freedesktop/Notifications",
                               "org.freedesktop.Notifications", "ActionInvoked", "us",
                               [42, "open"])
    host._on_host_signal(early)
    await host._notify(wire.Notify(7, "a", "s", "b", (("open", "Open"),)))
    header = await asyncio.wait_for(guest_reader.readexactly(4), 5)
    body = await guest_reader.readexactly(wire.frame_length(header))
    assert wire.decode_from_host(wire.parse_frame(body)).kind == "action"
    writer.close()
