"""Notifications per second through the D-Bus proxy vs. directly on one bus (issue 8).

Two private dbus-daemons stand for the guest's and the host's session buses; the proxy's two
halves are joined by a socket pair (as guest port 5001 joins them, minus the VM). A notification
server on the host bus counts what arrives. Direct: a client on the host bus calls Notify N
times. Proxied: a client on the guest bus calls Notify N times on the guest half; the clock
stops when the host server has received all N. Alternating, 5 rounds of 500.

Run: ``.venv/bin/python -m bench.dbusproxy``
"""

import asyncio
import socket
import tempfile
import time
from pathlib import Path

from dbus_next.aio.message_bus import MessageBus
from dbus_next.message import Message
from dbus_next.service import ServiceInterface, method
from rich.console import Console
from tests.support.dbus import start_bus

from bench.common import Comparison, Sample, print_comparisons
from vmsilo.dbusproxy import sig
from vmsilo.dbusproxy.guest import GuestProxy
from vmsilo.dbusproxy.host import HostProxy
from vmsilo.protocol.dbusproxy import RateLimit

ROUNDS = 5
COUNT = 500


class CountingServer(ServiceInterface):
    def __init__(self) -> None:
        super().__init__("org.freedesktop.Notifications")
        self.count = 0
        self.target = 0
        self.done = asyncio.Event()

    @method()
    def Notify(self, app: sig.S, replaces: sig.U, icon: sig.S, summary: sig.S, body: sig.S,
               actions: sig.AS, hints: sig.HINTS, timeout: sig.I) -> sig.U:
        self.count += 1
        if self.count >= self.target:
            self.done.set()
        return self.count


def notify(destination: str, n: int) -> Message:
    return Message(destination=destination, path="/org/freedesktop/Notifications",
                   interface="org.freedesktop.Notifications", member="Notify",
                   signature="susssasa{sv}i",
                   body=["bench", 0, "", f"notification {n}", "body", [], {}, 1000])


async def run() -> tuple[list[float], list[float]]:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        guest_daemon, guest_address = start_bus(tmp / "guest.sock")
        host_daemon, host_address = start_bus(tmp / "host.sock")
        try:
            host_bus = await MessageBus(bus_address=host_address).connect()
            server = CountingServer()
            host_bus.export("/org/freedesktop/Notifications", server)
            await host_bus.request_name("org.freedesktop.Notifications")
            a, b = socket.socketpair()
            hr, hw = await asyncio.open_unix_connection(sock=a)
            gr, gw = await asyncio.open_unix_connection(sock=b)
            # The benchmark measures throughput, not the flood guard: no rate limits here.
            host = HostProxy("bench", (255, 0, 0), host_address, hr, hw,
                             rate=RateLimit(rate=1e9, burst=10**9))
            guest = GuestProxy(guest_address, gr, gw,
                               notify_rate=RateLimit(rate=1e9, burst=10**9))
            tasks = [asyncio.create_task(host.run()), asyncio.create_task(guest.run())]
            await asyncio.sleep(0.5)
            direct_client = await MessageBus(bus_address=host_address).connect()
            guest_client = await MessageBus(bus_address=guest_address).connect()
            direct, proxied = [], []
            for _ in range(ROUNDS):
                server.count, server.target = 0, COUNT
                server.done.clear()
                start = time.perf_counter()
                for n in range(COUNT):
                    await direct_client.call(notify("org.freedesktop.Notifications", n))
                await server.done.wait()
                direct.append(COUNT / (time.perf_counter() - start))
                server.count, server.target = 0, COUNT
                server.done.clear()
                start = time.perf_counter()
                for n in range(COUNT):
                    await guest_client.call(notify("org.freedesktop.Notifications", n))
                await asyncio.wait_for(server.done.wait(), 120)
                proxied.append(COUNT / (time.perf_counter() - start))
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for bus in (direct_client, guest_client, host_bus):
                bus.disconnect()
            await asyncio.sleep(0.1)
            return proxied, direct
        finally:
            guest_daemon.terminate()
            host_daemon.terminate()


def main() -> None:
    proxied, direct = asyncio.run(run())
    print_comparisons("D-Bus proxy (issue 8)", [Comparison(
        f"notifications per second, {COUNT} per round: through the proxy vs directly",
        Sample("through the proxy", proxied, "/s"), Sample("directly", direct, "/s"),
        higher_is_better=True)], Console())


if __name__ == "__main__":
    main()
