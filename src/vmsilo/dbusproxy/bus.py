"""The few raw D-Bus calls both halves of the proxy make, on dbus-next."""

from typing import Any

from dbus_next.aio.message_bus import MessageBus
from dbus_next.constants import MessageType
from dbus_next.errors import DBusError
from dbus_next.message import Message

BUS_NAME = "org.freedesktop.DBus"
BUS_PATH = "/org/freedesktop/DBus"


async def call(bus: MessageBus, destination: str, path: str, interface: str, member: str,
               signature: str = "", body: list[Any] | None = None) -> list[Any]:
    """The reply's body; DBusError when the call fails or nothing answers."""
    reply = await bus.call(Message(destination=destination, path=path, interface=interface,
                                   member=member, signature=signature, body=body or []))
    if reply is None or reply.message_type == MessageType.ERROR:
        raise DBusError(reply.error_name if reply else "org.vmsilo.NoReply",
                        str(reply.body[0]) if reply and reply.body else "no reply")
    return list(reply.body)


async def add_match(bus: MessageBus, rule: str) -> None:
    await call(bus, BUS_NAME, BUS_PATH, BUS_NAME, "AddMatch", "s", [rule])
