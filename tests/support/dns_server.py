"""A small authoritative DNS server for the network tests: it answers A queries for the names
it is given and NXDOMAIN for everything else, over UDP. It stands for the internet's DNS in
a network namespace, so a guest's lookup can be followed end to end.

    python dns_server.py <listen-address> <name>=<ipv4> [...]
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import sys

TYPE_A = 1
CLASS_IN = 1
FLAG_RESPONSE = 0x8000
FLAG_AUTHORITATIVE = 0x0400
FLAG_RECURSION_DESIRED = 0x0100
RCODE_NXDOMAIN = 3


def parse_question(message: bytes) -> tuple[int, int, str, int, int, int] | None:
    """(id, flags, name, qtype, qclass, end of question) or None if malformed."""
    if len(message) < 12:
        return None
    ident, flags, qdcount = struct.unpack("!HHH", message[:6])
    if qdcount != 1:
        return None
    labels, offset = [], 12
    while True:
        if offset >= len(message):
            return None
        length = message[offset]
        offset += 1
        if length == 0:
            break
        if length > 63 or offset + length > len(message):
            return None
        labels.append(message[offset : offset + length].decode("ascii", "replace").lower())
        offset += length
    if offset + 4 > len(message):
        return None
    qtype, qclass = struct.unpack("!HH", message[offset : offset + 4])
    return ident, flags, ".".join(labels), qtype, qclass, offset + 4


def answer(message: bytes, records: dict[str, str]) -> bytes | None:
    question = parse_question(message)
    if question is None:
        return None
    ident, flags, name, qtype, qclass, end = question
    address = records.get(name)
    rd = flags & FLAG_RECURSION_DESIRED
    header_flags = FLAG_RESPONSE | FLAG_AUTHORITATIVE | rd
    if address is None:
        return struct.pack("!HHHHHH", ident, header_flags | RCODE_NXDOMAIN, 1, 0, 0, 0) + (
            message[12:end]
        )
    records_out = b""
    if qtype == TYPE_A and qclass == CLASS_IN:
        rdata = ipaddress.IPv4Address(address).packed
        # The name as a pointer to the question (offset 12), TTL 60.
        records_out = struct.pack("!HHHIH", 0xC00C, TYPE_A, CLASS_IN, 60, len(rdata)) + rdata
    count = 1 if records_out else 0
    header = struct.pack("!HHHHHH", ident, header_flags, 1, count, 0, 0)
    return header + message[12:end] + records_out


def main() -> None:
    listen = sys.argv[1]
    records = dict(arg.lower().split("=", 1) for arg in sys.argv[2:])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((listen, 53))
    while True:
        message, peer = sock.recvfrom(4096)
        reply = answer(message, records)
        if reply is not None:
            sock.sendto(reply, peer)


if __name__ == "__main__":
    main()
