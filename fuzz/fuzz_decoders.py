"""Atheris target for long fuzzing runs of every guest-facing decoder.

    pip install atheris
    python fuzz/fuzz_decoders.py fuzz/corpus/mux fuzz/corpus/exec_to_host fuzz/corpus/exec_to_guest

The first input byte picks the decoder (mux stream, exec to host, exec to guest); the rest is
the untrusted input. Any exception other than ``ProtocolError`` is a finding. Without atheris
installed, ``python fuzz/fuzz_decoders.py FILE...`` runs the inputs once (corpus check).
"""

from __future__ import annotations

from driver import run  # fuzz/driver.py: the script's directory is on sys.path

from vmsilo.protocol import mux as wire
from vmsilo.protocol.errors import ProtocolError
from vmsilo.protocol.exec import Direction, decode_frames

_PAYLOAD_PARSERS = {
    wire.FrameType.HELLO: wire.parse_hello,
    wire.FrameType.OPEN: wire.parse_open,
    wire.FrameType.ACCEPT: wire.parse_accept,
    wire.FrameType.CREDIT: wire.parse_credit,
    wire.FrameType.REFUSE: wire.parse_reason,
    wire.FrameType.RESET: wire.parse_reason,
}


def _mux(data: bytes) -> None:
    decoder = wire.MuxDecoder()
    decoder.feed(data)
    if decoder.hunt_hello() is None:
        return
    while (frame := decoder.next_frame()) is not None:
        try:
            wire.check_payload_size(frame)
            parse = _PAYLOAD_PARSERS.get(frame.type)
            if parse is not None:
                parse(frame.payload)
        except ProtocolError:
            continue


def test_one_input(data: bytes) -> None:
    if not data:
        return
    selector, body = data[0] % 3, data[1:]
    try:
        if selector == 0:
            _mux(body)
        elif selector == 1:
            decode_frames(body, Direction.TO_HOST)
        else:
            decode_frames(body, Direction.TO_GUEST)
    except ProtocolError:
        pass


def main() -> None:
    run(test_one_input)


if __name__ == "__main__":
    main()
