"""Atheris target for the D-Bus proxy's host-side decoder (what a hostile guest sends on port
5001): framing, JSON parsing and ``decode_from_guest``, plus the host half's icon framing on
whatever decodes. Any exception other than ``ProtocolViolation`` is a finding.

    python fuzz/fuzz_dbusproxy.py -runs=20000 fuzz/corpus/dbusproxy

The test suite runs it for a bounded number of iterations (tests/integration/test_fuzz.py).
Without atheris installed, ``python fuzz/fuzz_dbusproxy.py DIR...`` runs the corpus once.
"""


from driver import run  # fuzz/driver.py: the script's directory is on sys.path

from vmsilo.protocol import dbusproxy as wire

COLOUR = (52, 152, 219)


def test_one_input(data: bytes) -> None:
    from vmsilo.dbusproxy.host import framed

    offset = 0
    while offset + wire.HEADER.size <= len(data):
        try:
            length = wire.frame_length(data[offset : offset + wire.HEADER.size])
            offset += wire.HEADER.size
            body = data[offset : offset + length]
            offset += length
            message = wire.decode_from_guest(wire.parse_frame(body))
        except wire.ProtocolViolation:
            return
        props = getattr(message, "props", None)
        for pixmap in props.pixmaps if props is not None else ():
            framed(pixmap, COLOUR)


def main() -> None:
    run(test_one_input)


if __name__ == "__main__":
    main()
