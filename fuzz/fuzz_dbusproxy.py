"""Atheris target for the D-Bus proxy's host-side decoder (what a hostile guest sends on port
5001): framing, JSON parsing and ``decode_from_guest``, plus the host half's icon framing on
whatever decodes. Any exception other than ``ProtocolViolation`` is a finding.

    python fuzz/fuzz_dbusproxy.py -runs=20000 fuzz/corpus/dbusproxy

The test suite runs it for a bounded number of iterations (tests/integration/test_fuzz.py).
Without atheris installed, ``python fuzz/fuzz_dbusproxy.py DIR...`` runs the corpus once.
"""

import sys
from pathlib import Path

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
    try:
        import atheris  # type: ignore[import-not-found]
    except ImportError:
        for name in sys.argv[1:]:
            paths = sorted(Path(name).iterdir()) if Path(name).is_dir() else [Path(name)]
            for path in paths:
                test_one_input(path.read_bytes())
        print(f"ran the corpus once ({len(sys.argv) - 1} paths); install atheris to fuzz")
        return
    atheris.instrument_all()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
