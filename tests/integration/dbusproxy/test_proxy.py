"""The two halves of the D-Bus proxy between two private dbus-daemons standing for the guest's
and the host's session buses, connected through a socket pair as port 5001 would connect them.
On the host bus: a notification server and a StatusNotifierWatcher written here; on the guest
bus: a program that notifies and a tray item with a menu."""

import asyncio
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
from dbus_next.errors import DBusError
from dbus_next.message import Message
from dbus_next.service import ServiceInterface, dbus_property, method
from dbus_next.service import signal as dbus_signal
from dbus_next.signature import Variant

from tests.support.dbus import start_bus
from vmsilo.dbusproxy import sig
from vmsilo.dbusproxy.guest import GuestProxy
from vmsilo.dbusproxy.host import EARLY_SIGNALS, HostProxy
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
    def __init__(self, capabilities: tuple[str, ...] = ("actions", "body", "body-markup"),
                 ) -> None:
        super().__init__("org.freedesktop.Notifications")
        self.capabilities = list(capabilities)
        self.received: list[list[Any]] = []
        self.got = asyncio.Event()

    @method()
    def GetCapabilities(self) -> sig.AS:
        return self.capabilities

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
        self.title = "Mail"
        self.reads = 0  # how often its title was read (once per GetAll)
        self.fail_activate = False

    @dbus_property(access=PropertyAccess.READ)
    def Title(self) -> sig.S:
        self.reads += 1
        return self.title

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
        if self.fail_activate:  # as libappindicator items answer
            raise DBusError("org.freedesktop.DBus.Error.UnknownMethod", "no Activate here")

    @dbus_signal()
    def NewTitle(self):
        pass

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
    # Issue 15: a lone surrogate is a violation (it used to crash the host half), and an
    # identifier with a trailing newline no longer passes a "$"-anchored pattern.
    wire.HEADER.pack(41) + b'{"t":"notify","nid":1,"summary":"\\ud800!"}',
    wire.encode({"t": "item-add", "id": "item1\n", "props": {}}),
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




# --------------------------------------------------------------------------- issue 15

NOTIFY_SIGNATURE = "susssasa{sv}i"


async def notify(app_bus: MessageBus, summary: str, *, replaces: int = 0, body: str = "b",
                 actions: list[str] | None = None, app: str = "a") -> int:
    (nid,) = await call(app_bus, "org.freedesktop.Notifications",
                        "/org/freedesktop/Notifications", "org.freedesktop.Notifications",
                        "Notify", NOTIFY_SIGNATURE,
                        [app, replaces, "", summary, body, actions or [], {}, -1])
    return int(nid)


async def until(condition: Any, seconds: float = 10.0) -> None:
    """Wait until ``condition()`` is true (polling), or fail after ``seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def summaries(server: NotificationServer) -> list[str]:
    return [received[3] for received in server.received]


async def register(proxy: dict[str, Any], item: GuestItem) -> str:
    app_bus: MessageBus = proxy["app_bus"]
    app_bus.export("/StatusNotifierItem", item)
    app_bus.export("/MenuBar", GuestMenu())
    await app_bus.request_name("org.kde.StatusNotifierItem-99-1")
    await call(app_bus, "org.kde.StatusNotifierWatcher", "/StatusNotifierWatcher",
               "org.kde.StatusNotifierWatcher", "RegisterStatusNotifierItem", "s",
               ["org.kde.StatusNotifierItem-99-1"])
    watcher: HostWatcher = proxy["watcher"]
    await asyncio.wait_for(watcher.got.wait(), 10)
    return watcher.items[-1]


async def host_props(host_bus: MessageBus, name: str) -> dict[str, Any]:
    (props,) = await call(host_bus, name, "/StatusNotifierItem",
                          "org.freedesktop.DBus.Properties", "GetAll", "s",
                          ["org.kde.StatusNotifierItem"])
    return {key: value.value for key, value in props.items()}


async def test_201_notifications_at_once_then_a_normal_one_arrives(
    proxy: dict[str, Any],
) -> None:
    app_bus: MessageBus = proxy["app_bus"]
    server: NotificationServer = proxy["server"]
    host: HostProxy = proxy["host"]
    # All sent at once; a few dozen calls in flight at a time, as dbus-next's client fails a
    # write that finds its socket full (EAGAIN) instead of waiting.
    in_flight = asyncio.Semaphore(20)

    async def one(i: int) -> int:
        async with in_flight:
            return await notify(app_bus, f"burst {i}")

    ids = await asyncio.gather(*(one(i) for i in range(201)))
    assert len(set(ids)) == 201
    await notify(app_bus, "normal")
    # The guest half paces the burst below the host's limit: nothing shed, nothing lost.
    await until(lambda: "[work] normal" in summaries(server), 30)
    assert len(server.received) == 202
    assert host.violation is None and host.shed.notifications == 0


async def test_a_tray_icon_updating_at_60_per_second_for_20_seconds(
    proxy: dict[str, Any],
) -> None:
    # 1200 changes, as 60/s for 20 s would give; time compressed tenfold (600/s for 2 s).
    item = GuestItem()
    name = await register(proxy, item)
    host: HostProxy = proxy["host"]
    host_bus: MessageBus = proxy["host_bus"]
    await until(lambda: "item1" in host.items)
    updates = 0
    original = host.items["item1"].service.update

    def counting(props: wire.ItemProps) -> None:
        nonlocal updates
        updates += 1
        original(props)

    host.items["item1"].service.update = counting  # type: ignore[method-assign]
    reads_before = item.reads
    for i in range(1200):
        item.title = f"Mail {i}"
        item.NewTitle()
        await asyncio.sleep(1 / 600)
    # The last state arrives, read far fewer times than signalled and sent paced.
    await until(lambda: host.items["item1"].service.props.title == "Mail 1199", 10)
    assert (await host_props(host_bus, name))["Title"] == "[work] Mail 1199"
    # What crosses to the host is paced (tray 10/s): far fewer updates than changes.
    assert updates < 120, updates
    # Reads of the guest program coalesce only signals that arrive while a read is under
    # way: how many depends on how fast reads are here, but a signal never costs more
    # than one read (plus the registration's).
    assert item.reads - reads_before <= 1200 + 2, item.reads - reads_before
    # Repeated signals without a change send nothing.
    before = updates
    for _ in range(100):
        item.NewTitle()
    await asyncio.sleep(1.0)
    assert updates == before
    # Notifications still work; the host shed nothing and stayed connected.
    await notify(proxy["app_bus"], "after the flood")
    await until(lambda: "[work] after the flood" in summaries(proxy["server"]), 5)
    assert host.violation is None and host.shed.notifications == 0 and host.shed.tray == 0


@pytest.fixture
async def host_alone(buses: tuple[str, str]) -> AsyncIterator[dict[str, Any]]:
    """The host half alone, its guest side a raw stream the test writes (a hostile guest)."""
    _guest_address, host_address = buses
    host_bus = await MessageBus(bus_address=host_address).connect()
    server, watcher = NotificationServer(), HostWatcher()
    host_bus.export("/org/freedesktop/Notifications", server)
    host_bus.export("/StatusNotifierWatcher", watcher)
    await host_bus.request_name("org.freedesktop.Notifications")
    await host_bus.request_name("org.kde.StatusNotifierWatcher")
    a, b = socket.socketpair()
    reader, writer = await asyncio.open_unix_connection(sock=a)
    guest_reader, guest_writer = await asyncio.open_unix_connection(sock=b)
    host = HostProxy(VM, COLOUR, host_address, reader, writer)
    task = asyncio.create_task(host.run())
    yield {"host": host, "task": task, "server": server, "watcher": watcher,
           "host_bus": host_bus, "reader": guest_reader, "writer": guest_writer}
    guest_writer.close()
    await asyncio.wait_for(task, 10)
    host_bus.disconnect()


async def test_a_hostile_flood_is_shed_not_fatal(
    host_alone: dict[str, Any], caplog: pytest.LogCaptureFixture,
) -> None:
    host: HostProxy = host_alone["host"]
    writer: asyncio.StreamWriter = host_alone["writer"]
    server: NotificationServer = host_alone["server"]
    props = wire.ItemProps(title="t").to_wire()
    writer.write(wire.encode({"t": "item-add", "id": "item1", "props": props}))
    for i in range(1000):
        writer.write(wire.encode({"t": "notify", "nid": i + 1, "summary": f"flood {i}"}))
    for i in range(3000):
        writer.write(wire.encode({"t": "item-update", "id": "item1",
                                  "props": {**props, "title": f"t{i}"}}))
    await writer.drain()
    await asyncio.sleep(1.0)  # the flood ends; the budget refills
    writer.write(wire.encode({"t": "notify", "nid": 5000, "summary": "normal"}))
    await until(lambda: "[work] normal" in summaries(server), 10)
    await until(lambda: host.items["item1"].service.props.title == "t2999", 10)
    assert host.violation is None and not host_alone["task"].done()
    assert host.shed.notifications > 0 and host.shed.tray > 0
    assert len(server.received) < 1000  # the flood's excess was dropped, not forwarded
    writer.close()
    await asyncio.wait_for(host_alone["task"], 10)
    assert any("dropped" in r.message and "coalesced" in r.message for r in caplog.records)


async def test_display_strings_are_one_clean_line_on_the_host(host_alone: dict[str, Any]) -> None:
    # The guest half cleans too; a hostile guest sends the raw strings.
    writer: asyncio.StreamWriter = host_alone["writer"]
    server: NotificationServer = host_alone["server"]
    host: HostProxy = host_alone["host"]
    writer.write(wire.encode({
        "t": "notify", "nid": 1, "app": "Mail\u2028[banking]",
        "summary": "Hi\n[banking] pay now\u202e", "body": "one\u2029[banking]\ntwo\u2066",
        "actions": [["app.reply('x')", "Reply\n[banking]"]]}))
    writer.write(wire.encode({"t": "item-add", "id": "item1", "props": {
        "title": "Mail\n[banking]", "tooltipTitle": "x\u2029[banking]",
        "tooltipText": "a\u202eb\n<b>c</b>", "menu": True}}))
    writer.write(wire.encode({"t": "menu", "id": "item1", "layout": {
        "id": 0, "children": [{"id": 1, "label": "Open\u2028[banking]"}]}}))
    await writer.drain()
    await asyncio.wait_for(server.got.wait(), 10)
    app, _replaces, _icon, summary, body, actions, _timeout = server.received[0]
    assert app == "[work] Mail [banking]"
    assert summary == "[work] Hi [banking] pay now"
    assert body == "one [banking]\ntwo"
    assert actions == ["app.reply('x')", "Reply [banking]"]
    await until(lambda: "item1" in host.items and host.items["item1"].menu.revision > 0)
    name = host.items["item1"].name
    props = await host_props(host_alone["host_bus"], name)
    assert props["Title"] == "[work] Mail [banking]"
    # The tooltip text is markup by the StatusNotifierItem spec: the guest's text is escaped.
    assert props["ToolTip"][2:] == ["[work] x [banking]", "ab\n&lt;b&gt;c&lt;/b&gt;"]
    (_revision, layout) = await call(host_alone["host_bus"], name, "/MenuBar",
                                    "com.canonical.dbusmenu", "GetLayout", "iias", [0, -1, []])
    assert layout[2][0].value[1]["label"].value == "Open [banking]"


@pytest.mark.parametrize(
    ("capabilities", "expected"),
    [(("actions", "body", "body-markup"), "Tom &amp; Jerry &lt;3"),
     (("actions", "body"), "Tom & Jerry <3")],
    ids=["markup", "plain"],
)
async def test_the_body_is_encoded_for_what_the_server_does(
    proxy: dict[str, Any], capabilities: tuple[str, ...], expected: str,
) -> None:
    server: NotificationServer = proxy["server"]
    server.capabilities = list(capabilities)
    await notify(proxy["app_bus"], "s", body="Tom & Jerry <3")
    await asyncio.wait_for(server.got.wait(), 10)
    assert server.received[0][4] == expected


async def test_notification_ids_stay_unique_after_replacing_an_unknown_id(
    proxy: dict[str, Any],
) -> None:
    app_bus: MessageBus = proxy["app_bus"]
    server: NotificationServer = proxy["server"]
    first = await notify(app_bus, "one", replaces=2)  # no notification 2 exists
    second = await notify(app_bus, "two")
    third = await notify(app_bus, "three")
    assert len({first, second, third}) == 3  # was 2, 1, 2
    await until(lambda: len(server.received) == 3)
    assert [r[1] for r in server.received] == [0, 0, 0]  # nothing replaced on the host
    # Replacing one that is open keeps its id and replaces it on the host.
    assert await notify(app_bus, "two again", replaces=second) == second
    await until(lambda: len(server.received) == 4)
    assert server.received[3][1] == 41 + 2  # the host id of "two"


async def test_glib_action_keys_travel_as_opaque_tokens(proxy: dict[str, Any]) -> None:
    app_bus: MessageBus = proxy["app_bus"]
    server: NotificationServer = proxy["server"]
    actions: list[list[Any]] = []

    def on_signal(msg: Message) -> bool:
        if msg.member == "ActionInvoked":
            actions.append(list(msg.body))
        return False

    app_bus.add_message_handler(on_signal)
    await call(app_bus, "org.freedesktop.DBus", "/org/freedesktop/DBus",
               "org.freedesktop.DBus", "AddMatch", "s", ["type='signal',member='ActionInvoked'"])
    nid = await notify(app_bus, "s", actions=["app.reply('x')", "Reply", "default", ""])
    await asyncio.wait_for(server.got.wait(), 10)
    assert server.received[0][5] == ["app.reply('x')", "Reply", "default", ""]
    server.ActionInvoked(42, "app.reply('x')")
    await until(lambda: actions == [[nid, "app.reply('x')"]])


async def test_an_item_answering_activate_with_an_error_leaves_the_session_up(
    proxy: dict[str, Any],
) -> None:
    item = GuestItem()
    item.fail_activate = True
    name = await register(proxy, item)
    host_bus: MessageBus = proxy["host_bus"]
    await call(host_bus, name, "/StatusNotifierItem", "org.kde.StatusNotifierItem",
               "Activate", "ii", [1, 2])
    await asyncio.wait_for(item.got.wait(), 10)
    item.got.clear()
    item.fail_activate = False
    await call(host_bus, name, "/StatusNotifierItem", "org.kde.StatusNotifierItem",
               "Activate", "ii", [3, 4])
    await asyncio.wait_for(item.got.wait(), 10)
    assert item.activated == [(1, 2), (3, 4)]
    await notify(proxy["app_bus"], "still here")
    await until(lambda: "[work] still here" in summaries(proxy["server"]))
    assert proxy["host"].violation is None


async def test_the_guest_half_serves_a_new_host_connection_after_one_ends(
    buses: tuple[str, str],
) -> None:
    # After a violation the host half hangs up and connects again (host_main); the guest half
    # must serve the new connection and tell it every tray item again.
    guest_address, _host_address = buses
    guest = GuestProxy(guest_address)
    await guest.start()
    app_bus = await MessageBus(bus_address=guest_address).connect()
    item = GuestItem()
    app_bus.export("/StatusNotifierItem", item)
    await app_bus.request_name("org.kde.StatusNotifierItem-99-1")
    await call(app_bus, "org.kde.StatusNotifierWatcher", "/StatusNotifierWatcher",
               "org.kde.StatusNotifierWatcher", "RegisterStatusNotifierItem", "s",
               ["org.kde.StatusNotifierItem-99-1"])

    async def first_frame() -> dict[str, Any]:
        a, b = socket.socketpair()
        host_reader, host_writer = await asyncio.open_unix_connection(sock=a)
        guest_reader, guest_writer = await asyncio.open_unix_connection(sock=b)
        serving = asyncio.create_task(guest.serve(guest_reader, guest_writer))
        frame = await asyncio.wait_for(wire.read_frame(host_reader), 10)
        host_writer.close()  # as the host half does on a violation
        await asyncio.wait_for(serving, 10)
        return frame

    assert (await first_frame())["t"] == "item-add"
    again = await first_frame()
    assert again["t"] == "item-add" and again["props"]["title"] == "Mail"
    app_bus.disconnect()
    assert guest.bus is not None
    guest.bus.disconnect()


async def test_an_early_signal_is_kept_while_its_notify_is_pending(
    buses: tuple[str, str],
) -> None:
    # The desktop's server may signal before the host half has handled the reply to its
    # Notify call (D-Bus keeps one sender's order: the signal comes right before the reply);
    # it is kept until the id is known, then forwarded. Signals for other programs'
    # notifications, however many, neither fill the buffer for good nor push ours out (the
    # oldest go first).
    _guest_address, host_address = buses
    a, b = socket.socketpair()
    reader, writer = await asyncio.open_unix_connection(sock=a)
    guest_reader, _guest_writer = await asyncio.open_unix_connection(sock=b)
    host = HostProxy(VM, COLOUR, host_address, reader, writer)

    def closed(host_id: int) -> Message:
        return Message.new_signal("/org/freedesktop/Notifications",
                                  "org.freedesktop.Notifications", "NotificationClosed", "uu",
                                  [host_id, 2])

    for other in range(1000, 3000):  # other programs' notifications, no call of ours pending
        host._on_host_signal(closed(other))
    assert host.early == {}

    async def reply_42(*args: Any) -> list[Any]:
        if args[3] == "GetCapabilities":
            return [["body"]]
        for other in range(5000, 7000):
            host._on_host_signal(closed(other))
        assert len(host.early) <= EARLY_SIGNALS
        host._on_host_signal(Message.new_signal(
            "/org/freedesktop/Notifications", "org.freedesktop.Notifications", "ActionInvoked",
            "us", [42, "open"]))
        return [42]

    host._call = reply_42  # type: ignore[method-assign]
    await host._notify(wire.Notify(7, "a", "s", "b", (("open", "Open"),)))
    header = await asyncio.wait_for(guest_reader.readexactly(4), 5)
    body = await guest_reader.readexactly(wire.frame_length(header))
    message = wire.decode_from_host(wire.parse_frame(body))
    assert (message.kind, message.nid, message.key) == ("action", 7, "open")
    assert host.early == {}  # nothing pending: the rest was dropped
    writer.close()
