"""A small typed face on pyroute2 (which ships no types): the few link, address and qdisc
operations ``apply`` needs, in the host's network namespace or a named one. Every call is a
plain netlink request; nothing is cached, so the kernel is always the source of truth.
"""

from __future__ import annotations

import errno
import ipaddress
from types import TracebackType
from typing import Any

from pyroute2 import IPRoute, NetlinkError, NetNS

NUD_NOARP = 0x40  # a static forwarding entry (`bridge fdb … static`)
NUD_PERMANENT = 0x80


class Netlink:
    def __init__(self, netns: str | None = None) -> None:
        self._ipr: Any = NetNS(netns) if netns else IPRoute()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._ipr.close()

    def index(self, name: str) -> int | None:
        found: list[int] = self._ipr.link_lookup(ifname=name)
        return found[0] if found else None

    def _link(self, index: int) -> Any:
        return self._ipr.get_links(index)[0]

    def kind(self, index: int) -> str | None:
        info = self._link(index).get_attr("IFLA_LINKINFO")
        return None if info is None else str(info.get_attr("IFLA_INFO_KIND"))

    def tap_owner(self, index: int) -> int | None:
        info = self._link(index).get_attr("IFLA_LINKINFO")
        data = None if info is None else info.get_attr("IFLA_INFO_DATA")
        owner = None if data is None else data.get_attr("IFLA_TUN_OWNER")
        return None if owner is None else int(owner)

    def master(self, index: int) -> int | None:
        master = self._link(index).get_attr("IFLA_MASTER")
        return None if master is None else int(master)

    def ports(self, bridge_index: int) -> list[int]:
        return [
            int(link["index"])
            for link in self._ipr.get_links()
            if link.get_attr("IFLA_MASTER") == bridge_index
        ]

    def create_tap(self, name: str, uid: int) -> int:
        # no_pi: QEMU and the other VMMs open TAPs without the packet-information header.
        self._ipr.link("add", ifname=name, kind="tuntap", mode="tap", uid=uid, ifr={"no_pi": True})
        return self._require(name)

    def create_bridge(self, name: str, mac: str) -> int:
        # A fixed MAC: a bridge otherwise takes its ports' lowest, and each change of its MAC
        # flushes its neighbour entries (the proxy ARP table of vm-switch networks).
        self._ipr.link("add", ifname=name, kind="bridge", address=mac)
        return self._require(name)

    def _require(self, name: str) -> int:
        index = self.index(name)
        if index is None:
            raise NetlinkError(errno.ENODEV, f"{name} vanished right after creation")
        return index

    def set_master(self, index: int, master: int) -> None:
        self._ipr.link("set", index=index, master=master)

    def set_up(self, index: int) -> None:
        self._ipr.link("set", index=index, state="up")

    def delete(self, index: int) -> None:
        try:
            self._ipr.link("del", index=index)
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise

    def addresses(self, index: int) -> set[str]:
        return {
            f"{entry.get_attr('IFA_ADDRESS')}/{entry['prefixlen']}"
            for entry in self._ipr.get_addr(index=index, family=2)
        }

    def add_address(self, index: int, cidr: str) -> None:
        interface = ipaddress.IPv4Interface(cidr)
        self._ipr.addr(
            "add", index=index, address=str(interface.ip), prefixlen=interface.network.prefixlen
        )

    def delete_address(self, index: int, cidr: str) -> None:
        interface = ipaddress.IPv4Interface(cidr)
        self._ipr.addr(
            "del", index=index, address=str(interface.ip), prefixlen=interface.network.prefixlen
        )

    def root_qdisc(self, index: int) -> str | None:
        for qdisc in self._ipr.get_qdiscs(index):
            if qdisc["parent"] == 0xFFFFFFFF:
                return str(qdisc.get_attr("TCA_KIND"))
        return None

    def set_fq_codel(
        self, index: int, *, target_us: int, interval_us: int, memory_limit: int, quantum: int
    ) -> bool:
        """Replace the root qdisc by fq_codel; False when the kernel has no fq_codel."""
        try:
            self._ipr.tc(
                "replace",
                "fq_codel",
                index,
                target=target_us,
                interval=interval_us,
                memory_limit=memory_limit,
                quantum=quantum,
            )
        except NetlinkError as exc:
            if exc.code in (errno.ENOENT, errno.EOPNOTSUPP):
                return False
            raise
        return True

    def name(self, index: int) -> str:
        return str(self._link(index).get_attr("IFLA_IFNAME"))

    def operstate(self, index: int) -> str:
        """``up``, ``down`` or (a TAP with no VMM attached) ``no carrier``."""
        link = self._link(index)
        if not link["flags"] & 1:  # IFF_UP
            return "down"
        state = str(link.get_attr("IFLA_OPERSTATE") or "UNKNOWN")
        return "no carrier" if state == "DOWN" else "up"

    # -- bridge ports (vm-switch) -------------------------------------------------------------

    def set_port_proxy_arp(self, index: int) -> None:
        """The bridge answers ARP for the members it knows, and learns no MAC from traffic
        (members' MACs are entered statically)."""
        self._ipr.brport("set", index=index, proxyarp=1, learning=0)

    def add_static_fdb(self, index: int, bridge: int, mac: str) -> None:
        self._ipr.fdb("replace", ifindex=index, lladdr=mac, master=bridge, state=NUD_NOARP)

    def set_neighbour(self, index: int, ip: str, mac: str) -> None:
        self._ipr.neigh("replace", dst=ip, lladdr=mac, ifindex=index, state=NUD_PERMANENT)

    def delete_neighbour(self, index: int, ip: str) -> None:
        try:
            self._ipr.neigh("del", dst=ip, ifindex=index)
        except NetlinkError as exc:
            if exc.code not in (errno.ENOENT, errno.ENODEV):
                raise
