"""A notification server for the system tests, standing for the desktop's: it owns
org.freedesktop.Notifications on the bus given, writes every notification it receives as a
JSON line to a file, and invokes the first action of each one (as a click would), so that the
action's way back to the guest is exercised too.

    python notification_server.py <bus address> <output file>
"""

import asyncio
import json
import sys

from dbus_next.aio.message_bus import MessageBus
from dbus_next.service import ServiceInterface, method, signal

from vmsilo.dbusproxy import sig


class Server(ServiceInterface):
    def __init__(self, output: str) -> None:
        super().__init__("org.freedesktop.Notifications")
        self.output = output
        self.next_id = 100

    @method()
    def Notify(self, app: sig.S, replaces: sig.U, icon: sig.S, summary: sig.S, body: sig.S,
               actions: sig.AS, hints: sig.HINTS, timeout: sig.I) -> sig.U:
        self.next_id += 1
        with open(self.output, "a") as out:
            out.write(json.dumps({"id": self.next_id, "app": app, "summary": summary,
                                  "body": body, "actions": actions}) + "\n")
        if actions:
            nid, key = self.next_id, actions[0]
            asyncio.get_running_loop().call_later(0.5, lambda: self.ActionInvoked(nid, key))
        return self.next_id

    @method()
    def CloseNotification(self, nid: sig.U):
        pass

    @method()
    def GetCapabilities(self) -> sig.AS:
        return ["actions", "body"]

    @signal()
    def ActionInvoked(self, nid: int, key: str) -> sig.US:
        return [nid, key]


async def main() -> None:
    bus = await MessageBus(bus_address=sys.argv[1]).connect()
    bus.export("/org/freedesktop/Notifications", Server(sys.argv[2]))
    await bus.request_name("org.freedesktop.Notifications")
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
