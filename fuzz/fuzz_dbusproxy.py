"""Atheris target for the D-Bus proxy (what a hostile guest sends on port 5001): framing, JSON
parsing and ``decode_from_guest``, then every encoder the host half applies to what decodes —
re-encoding for the wire, the display cleaning of titles, tooltips, app names, summaries,
labels and bodies, the body's markup encoding, the icon framing — and, on the same bytes,
``decode_from_host`` (the guest half's decoder). Any exception other than
``ProtocolViolation`` is a finding, and so is an encoder output without its intended shape:
a display line that breaks or keeps a bidi/format character, a body whose markup does not
read back, a message that does not round-trip.

    python fuzz/fuzz_dbusproxy.py -runs=20000 fuzz/corpus/dbusproxy

The test suite runs it for a bounded number of iterations (tests/integration/test_fuzz.py).
Without atheris installed, ``python fuzz/fuzz_dbusproxy.py DIR...`` runs the corpus once.
"""

import contextlib
import unicodedata
from typing import Any

from driver import run  # fuzz/driver.py: the script's directory is on sys.path

from vmsilo.protocol import dbusproxy as wire

COLOUR = (52, 152, 219)
INVISIBLE = ("Cc", "Cf", "Cs", "Zl", "Zp")


def _check_line(text: str, limit: int) -> None:
    line = wire.one_line(text, limit)
    assert len(line) <= limit and len(line.splitlines()) <= 1, repr(line)
    assert not any(unicodedata.category(c) in INVISIBLE for c in line), repr(line)
    line.encode("utf-8")


def _check_body(text: str, limit: int) -> None:
    body = wire.body_text(text, limit)
    assert len(body) <= limit
    assert all(len(line.splitlines()) <= 1 for line in body.split("\n")), repr(body)
    assert not any(unicodedata.category(c) in INVISIBLE and c != "\n" for c in body)
    for markup in (True, False):
        encoded = wire.notification_body(body, markup=markup)
        assert wire.unescape_body(encoded, markup=markup) == body
        assert not markup or ("<" not in encoded and ">" not in encoded)
    body.encode("utf-8")


def _check_menu(node: wire.MenuNode) -> None:
    _check_line(node.label, wire.MAX_LABEL)
    for child in node.children:
        _check_menu(child)


def _check_encoders(message: Any) -> None:
    from vmsilo.dbusproxy.host import framed

    again = wire.encode(wire.to_wire(message))
    assert wire.decode_from_guest(wire.parse_frame(again[wire.HEADER.size :])) == message
    if isinstance(message, wire.Notify):
        _check_line(message.app, wire.MAX_APP)
        _check_line(message.summary, wire.MAX_SUMMARY)
        _check_body(message.body, wire.MAX_BODY)
        for key, label in message.actions:
            assert wire.is_action_key(key)
            key.encode("utf-8")
            _check_line(label, wire.MAX_LABEL)
    props = getattr(message, "props", None)
    if props is not None:
        _check_line(props.title, wire.MAX_TITLE)
        _check_line(props.tooltip_title, wire.MAX_TITLE)
        _check_body(props.tooltip_text, wire.MAX_TOOLTIP)
        for pixmap in props.pixmaps:
            framed(pixmap, COLOUR)
    if isinstance(message, wire.MenuLayout):
        _check_menu(message.root)


def test_one_input(data: bytes) -> None:
    offset = 0
    while offset + wire.HEADER.size <= len(data):
        try:
            length = wire.frame_length(data[offset : offset + wire.HEADER.size])
            offset += wire.HEADER.size
            body = data[offset : offset + length]
            offset += length
            document = wire.parse_frame(body)
        except wire.ProtocolViolation:
            return
        with contextlib.suppress(wire.ProtocolViolation):
            wire.decode_from_host(document)
        try:
            message = wire.decode_from_guest(document)
        except wire.ProtocolViolation:
            return
        _check_encoders(message)


def main() -> None:
    run(test_one_input)


if __name__ == "__main__":
    main()
