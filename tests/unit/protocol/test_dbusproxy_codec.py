"""The D-Bus proxy's wire format: valid messages round-trip, and every mutation of a valid
message — any field replaced by any JSON value, any byte string as a frame — is either a valid
message or a ``ProtocolViolation``, never another exception."""

from __future__ import annotations

import contextlib
from typing import Any

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
