"""The D-Bus proxy's wire format: valid messages round-trip, and every mutation of a valid
message — any field replaced by any JSON value, any byte string as a frame — is either a valid
message or a ``ProtocolViolation``, never another exception."""

from __future__ import annotations

import contextlib
import unicodedata
from typing import Any
from xml.etree import ElementTree

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmsilo.protocol import dbusproxy as wire

ICON = wire.Pixmap(2, 2, bytes(range(16)))
MENU = wire.MenuNode(0, children=(wire.MenuNode(1, "Open"), wire.MenuNode(2, type="separator")))
VALID: list[wire.FromGuest] = [
    wire.Notify(7, "Mail", "New mail", "from Bob", (("open", "Open"),), 2, 5000),
    wire.NotifyClose(7),
    wire.ItemAdd("item1", wire.ItemProps("Mail", "t", "x", "NeedsAttention", "Communications",
                                         "mail", (ICON,), True)),
    wire.ItemUpdate("item1", wire.ItemProps(title="Mail (2)")),
    wire.ItemRemove("item1"),
    wire.MenuLayout("item1", MENU),
]

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


@pytest.mark.parametrize("message", VALID, ids=lambda m: type(m).__name__)
def test_valid_messages_round_trip(message: wire.FromGuest) -> None:
    frame = wire.encode(wire.to_wire(message))
    length = wire.frame_length(frame[:4])
    assert wire.decode_from_guest(wire.parse_frame(frame[4 : 4 + length])) == message


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    paths = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            paths += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            paths += _paths(child, (*prefix, index))
    return paths


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = _replace(value[path[0]], path[1:], new)
    return copy


@settings(max_examples=400)
@given(st.sampled_from(VALID), st.data(), JSON)
def test_any_field_replaced_by_any_value_decodes_or_is_refused(
    message: wire.FromGuest, data: st.DataObject, new: Any,
) -> None:
    document = wire.to_wire(message)
    path = data.draw(st.sampled_from(_paths(document)))
    mutated = _replace(document, path, new)
    with contextlib.suppress(wire.ProtocolViolation):
        wire.decode_from_guest(mutated)


@settings(max_examples=400)
@given(st.binary(max_size=300))
def test_any_frame_body_parses_or_is_refused(body: bytes) -> None:
    try:
        document = wire.parse_frame(body)
        wire.decode_from_guest(document)
    except wire.ProtocolViolation:
        pass


@pytest.mark.parametrize(
    ("document", "complaint"),
    [
        ({"t": "notify", "nid": 0, "summary": "x"}, "nid"),
        ({"t": "notify", "nid": 1, "summary": "a\x1b[31mred"}, "control characters"),
        ({"t": "notify", "nid": 1, "summary": "x", "actions": [["k"]]}, "pair"),
        ({"t": "notify", "nid": 1, "summary": "x", "actions": [["k", "l"]] * 9}, "at most 8"),
        ({"t": "item-add", "id": "a b", "props": {}}, "identifier"),
        ({"t": "item-add", "id": "a", "props": {"status": "Evil"}}, "status"),
        ({"t": "item-add", "id": "a", "props": {"pixmaps": [{"w": 2, "h": 2, "data": "AAAA"}]}},
         "not 2x2x4"),
        ({"t": "item-add", "id": "a", "props": {"pixmaps": [{"w": 2, "h": 2, "data": "!!"}]}},
         "base64"),
        ({"t": "item-add", "id": "a", "props": {"pixmaps": [{"w": 0, "h": 2, "data": ""}]}},
         "w is not"),
        ({"t": "menu", "id": "a", "layout": {"id": 0, "children": "x"}}, "children"),
        ({"t": "exec", "id": "a"}, "unknown message type"),
    ],
)
def test_specific_violations_name_the_field(document: dict[str, Any], complaint: str) -> None:
    with pytest.raises(wire.ProtocolViolation, match=complaint):
        wire.decode_from_guest(document)


def test_menus_are_bounded_in_depth_and_size() -> None:
    deep: dict[str, Any] = {"id": 0}
    for level in range(wire.MAX_MENU_DEPTH + 2):
        deep = {"id": level + 1, "children": [deep]}
    with pytest.raises(wire.ProtocolViolation, match="deeper"):
        wire.decode_from_guest({"t": "menu", "id": "a", "layout": deep})
    wide = {"id": 0, "children": [{"id": i} for i in range(wire.MAX_MENU_NODES + 1)]}
    with pytest.raises(wire.ProtocolViolation, match="more than"):
        wire.decode_from_guest({"t": "menu", "id": "a", "layout": wide})


def test_frames_over_the_limit_are_refused() -> None:
    with pytest.raises(wire.ProtocolViolation, match="exceeds"):
        wire.frame_length(wire.HEADER.pack(wire.MAX_FRAME + 1))


def test_the_rate_limit_allows_a_burst_then_the_rate() -> None:
    limit = wire.RateLimit(rate=10, burst=5)
    assert all(limit.allow(0.0) for _ in range(5))
    assert not limit.allow(0.0)
    assert limit.allow(0.1)  # one token back after 0.1 s at 10/s
    assert not limit.allow(0.1)


def test_rate_limit_wait_says_when_the_next_token_comes() -> None:
    limit = wire.RateLimit(rate=10, burst=1)
    assert limit.wait(0.0) == 0.0
    assert limit.allow(0.0)
    assert limit.wait(0.0) == pytest.approx(0.1)
    assert limit.wait(0.05) == pytest.approx(0.05)
    assert limit.wait(0.1) == 0.0


# --------------------------------------------------------------------------- issue 15

# A "text" string as the guest half sends it: no C0 control but tab and newline, no surrogate.
TEXT_CHARS = st.characters(exclude_categories=("Cs",), exclude_characters=tuple(
    chr(c) for c in [*range(0, 9), *range(11, 32), 127]))


def _text(max_size: int) -> st.SearchStrategy[str]:
    return st.text(TEXT_CHARS, max_size=max_size)


IDS = st.from_regex(r"[A-Za-z0-9_.:-]{1,64}", fullmatch=True)
KEYS = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\0"),
               max_size=wire.MAX_ACTION_KEY)
PIXMAPS = st.builds(
    lambda w, h, seed: wire.Pixmap(w, h, bytes([seed]) * (w * h * 4)),
    st.integers(1, 8), st.integers(1, 8), st.integers(0, 255))
PROPS = st.builds(
    wire.ItemProps, _text(wire.MAX_TITLE), _text(wire.MAX_TITLE), _text(wire.MAX_TOOLTIP),
    st.sampled_from(wire.STATUSES), st.sampled_from(wire.CATEGORIES), _text(wire.MAX_ID * 2),
    st.lists(PIXMAPS, max_size=3).map(tuple), st.booleans())
MENUS = st.recursive(
    st.builds(wire.MenuNode, st.integers(0, 2**31 - 1), _text(wire.MAX_LABEL)),
    lambda kids: st.builds(wire.MenuNode, st.integers(0, 2**31 - 1), _text(wire.MAX_LABEL),
                           st.booleans(), st.booleans(), st.sampled_from(wire.MENU_TYPES),
                           st.sampled_from(wire.TOGGLE_TYPES), st.integers(-1, 1),
                           st.lists(kids, max_size=3).map(tuple)),
    max_leaves=20)
NIDS = st.integers(1, 2**32 - 1)
MESSAGES = st.one_of(
    st.builds(wire.Notify, NIDS, _text(wire.MAX_APP), _text(wire.MAX_SUMMARY),
              _text(wire.MAX_BODY),
              st.lists(st.tuples(KEYS, _text(wire.MAX_LABEL)), max_size=wire.MAX_ACTIONS)
              .map(tuple), st.integers(0, 2), st.integers(-1, wire.MAX_TIMEOUT_MS)),
    st.builds(wire.NotifyClose, NIDS),
    st.builds(wire.ItemAdd, IDS, PROPS),
    st.builds(wire.ItemUpdate, IDS, PROPS),
    st.builds(wire.ItemRemove, IDS),
    st.builds(wire.MenuLayout, IDS, MENUS),
)
KEYS_OF = {
    wire.Notify: {"t", "nid", "app", "summary", "body", "actions", "urgency", "timeout"},
    wire.NotifyClose: {"t", "nid"},
    wire.ItemAdd: {"t", "id", "props"},
    wire.ItemUpdate: {"t", "id", "props"},
    wire.ItemRemove: {"t", "id"},
    wire.MenuLayout: {"t", "id", "layout"},
}


@settings(max_examples=300)
@given(MESSAGES)
def test_every_valid_message_round_trips_as_one_frame_of_one_object(
    message: wire.FromGuest,
) -> None:
    frame = wire.encode(wire.to_wire(message))
    length = wire.frame_length(frame[:4])
    assert len(frame) == 4 + length  # exactly one frame
    document = wire.parse_frame(frame[4:])
    assert set(document) == KEYS_OF[type(message)]  # exactly the intended fields
    assert wire.decode_from_guest(document) == message


@settings(max_examples=200)
@given(NIDS, KEYS)
def test_actions_from_the_host_round_trip_with_any_key(nid: int, key: str) -> None:
    frame = wire.encode(wire.action_invoked(nid, key))
    decoded = wire.decode_from_host(wire.parse_frame(frame[4:]))
    assert (decoded.kind, decoded.nid, decoded.key) == ("action", nid, key)


@pytest.mark.parametrize("key", ["app.reply('x')", "default", "inline-reply", "ä ö", "a\nb",
                                 "x" * wire.MAX_ACTION_KEY])
def test_action_keys_are_opaque_tokens(key: str) -> None:
    document = {"t": "notify", "nid": 1, "summary": "s", "actions": [[key, "Reply"]]}
    message = wire.decode_from_guest(document)
    assert isinstance(message, wire.Notify) and message.actions == ((key, "Reply"),)


@pytest.mark.parametrize("key", ["a\0b", "x" * (wire.MAX_ACTION_KEY + 1), "\ud800"])
def test_action_keys_are_bounded_and_carriable(key: str) -> None:
    with pytest.raises(wire.ProtocolViolation, match="action key"):
        wire.decode_from_guest({"t": "notify", "nid": 1, "summary": "s",
                                "actions": [[key, "Reply"]]})
    with pytest.raises(wire.ProtocolViolation, match="action key"):
        wire.decode_from_host({"t": "action", "nid": 1, "key": key})


@pytest.mark.parametrize("ident", ["item1\n", "item1\r", "\nitem1", "a" * 65, ""])
def test_identifiers_are_matched_whole(ident: str) -> None:
    # "$" would accept the trailing newline; fullmatch does not.
    assert not wire.is_identifier(ident)
    with pytest.raises(wire.ProtocolViolation, match="identifier"):
        wire.decode_from_guest({"t": "item-add", "id": ident, "props": {}})
    with pytest.raises(wire.ProtocolViolation, match="identifier"):
        wire.decode_from_host({"t": "activate", "id": ident, "x": 0, "y": 0})


@pytest.mark.parametrize(
    "body",
    [b'{"t":"notify","nid":1,"summary":"\\ud800"}',
     b'{"t":"notify","nid":1,"summary":"s","body":"a\\udfffb"}',
     b'{"t":"notify","nid":1,"summary":"s","app":"\\ud83d"}',
     b'{"t":"notify","nid":1,"summary":"s","actions":[["k","\\udc00"]]}',
     b'{"t":"item-add","id":"a","props":{"title":"\\ud800"}}',
     b'{"t":"item-add","id":"a","props":{"iconName":"\\ud800"}}',
     b'{"t":"menu","id":"a","layout":{"id":0,"label":"\\udbff"}}'],
)
def test_lone_surrogates_are_a_violation(body: bytes) -> None:
    with pytest.raises(wire.ProtocolViolation, match=r"surrogate|malformed|action key"):
        wire.decode_from_guest(wire.parse_frame(body))


def test_a_surrogate_pair_is_one_character_and_fine() -> None:
    message = wire.decode_from_guest(
        wire.parse_frame(b'{"t":"notify","nid":1,"summary":"\\ud83d\\ude00"}'))
    assert isinstance(message, wire.Notify) and message.summary == "\U0001f600"


LINE_BREAKS = ["\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]


@pytest.mark.parametrize("brk", LINE_BREAKS)
def test_one_line_cannot_start_a_second_line(brk: str) -> None:
    cleaned = wire.one_line(f"Mail{brk}[banking] Your account", wire.MAX_SUMMARY)
    assert cleaned.splitlines() == [cleaned]
    assert cleaned == "Mail [banking] Your account"


@pytest.mark.parametrize("fmt", ["\u202e", "\u2066", "\u2069", "\u200b", "\u200e", "\ufeff",
                                 "\u061c", "\U000e0041"])
def test_one_line_drops_bidi_and_format_characters(fmt: str) -> None:
    assert wire.one_line(f"ab{fmt}c", 10) == "abc"
    assert wire.body_text(f"ab{fmt}c\nd{fmt}", 10) == "abc\nd"


@settings(max_examples=300)
@given(st.text(max_size=200), st.integers(0, 100))
def test_one_line_is_one_clean_line(text: str, limit: int) -> None:
    cleaned = wire.one_line(text, limit)
    assert len(cleaned) <= limit and len(cleaned.splitlines()) <= 1
    assert wire.one_line(cleaned, limit) == cleaned
    assert not any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") for c in cleaned)
    cleaned.encode("utf-8")


@settings(max_examples=300)
@given(st.text(max_size=200))
def test_body_text_keeps_lines_and_nothing_invisible(text: str) -> None:
    cleaned = wire.body_text(text, wire.MAX_BODY)
    lines = cleaned.split("\n")
    assert len(lines) == text.replace("\r\n", "\n").replace("\r", "\n").count("\n") + 1
    assert all(len(line.splitlines()) <= 1 for line in lines)  # no other kind of line break
    assert wire.body_text(cleaned, wire.MAX_BODY) == cleaned
    assert not any(unicodedata.category(c) in ("Cf", "Cs", "Zl", "Zp") for c in cleaned)


XML_TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters=tuple(
    chr(c) for c in [*range(0, 9), 11, 12, *range(14, 32), 0xFFFE, 0xFFFF])), max_size=200)


@settings(max_examples=300)
@given(XML_TEXT)
def test_markup_bodies_are_character_data_that_round_trip(text: str) -> None:
    # A server with "body-markup" parses the body as XML-like markup: the encoded form must be
    # character data only (no element, no entity but the escapes) that reads back as the text.
    encoded = wire.notification_body(text, markup=True)
    assert "<" not in encoded and ">" not in encoded
    element = ElementTree.fromstring(f"<b>{encoded}</b>")
    assert len(element) == 0 and (element.text or "") == text.replace("\r\n", "\n").replace(
        "\r", "\n")
    assert wire.unescape_body(encoded, markup=True) == text


@settings(max_examples=100)
@given(st.text(max_size=200))
def test_plain_bodies_are_sent_as_they_are(text: str) -> None:
    assert wire.notification_body(text, markup=False) == text
    assert wire.unescape_body(wire.notification_body(text, markup=False), markup=False) == text


def test_markup_escaping_only_where_markup_is_interpreted() -> None:
    assert wire.notification_body("Tom & Jerry <3", markup=False) == "Tom & Jerry <3"
    assert wire.notification_body("Tom & Jerry <3", markup=True) == "Tom &amp; Jerry &lt;3"
