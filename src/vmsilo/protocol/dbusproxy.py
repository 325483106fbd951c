"""The D-Bus proxy's wire format on guest port 5001: tray items and notifications from the
guest, activations, menu clicks and notification actions back from the host.

A frame is a 4-byte big-endian length and that many bytes of UTF-8 JSON, one object with a
``"t"`` (type) field. Both halves use ``encode``; the host half treats everything from the
guest as hostile and turns it into typed values with ``decode_from_guest``, which checks every
field right after decoding — types, lengths, identifier shapes, icon sizes and counts, menu
depth and size, strings that are not Unicode scalar values (a lone surrogate such as
``"\\ud800"`` in the JSON) — and raises ``ProtocolViolation`` on the first problem; the host
then disconnects that VM's proxy and connects again later. Volume alone is no violation: the
host half sheds what is over its rate (see ``RateLimit``) and the guest half paces itself.

Strings are carried as they are (within limits); where they land they are encoded for that
place: ``one_line`` and ``body_text`` clean them for display, and the host half encodes a body
for its notification server's markup (``notification_body``). Action keys are opaque tokens
(GLib's ``app.reply('x')`` as much as ``default``), only bounded in size.

JSON (no pickle, no eval) keeps the decoder small; binary icon data travels as base64. Stdlib
only (with ``vmsilo.protocol.text``): the guest half imports it too.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import html
import json
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vmsilo.protocol.errors import ProtocolError
from vmsilo.protocol.text import clean_display_text

PORT = 5001
HEADER = struct.Struct(">I")
MAX_FRAME = 1 << 20  # 1 MiB: a few 256x256 icons in base64 fit; nothing legitimate is bigger

MAX_ID = 64
MAX_TITLE = 256
MAX_TOOLTIP = 1024
MAX_APP = 128
MAX_SUMMARY = 512
MAX_BODY = 4096
MAX_LABEL = 256
MAX_ACTIONS = 8
MAX_PIXMAPS = 8
MAX_ICON_SIDE = 256
MAX_MENU_DEPTH = 8
MAX_MENU_NODES = 512
MAX_ITEMS = 32  # tray items one VM may show at once (enforced by the host half)
MAX_TIMEOUT_MS = 24 * 3600 * 1000
MAX_ACTION_KEY = 256
# Used with fullmatch only: "$" would accept a trailing newline.
ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
STATUSES = ("Passive", "Active", "NeedsAttention")
CATEGORIES = ("ApplicationStatus", "Communications", "SystemServices", "Hardware")
ORIENTATIONS = ("horizontal", "vertical")
MENU_TYPES = ("standard", "separator")
TOGGLE_TYPES = ("", "checkmark", "radio")
# Control characters other than tab and newline have no business in a title or a body.
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
SURROGATES = re.compile(r"[\ud800-\udfff]")


def is_identifier(value: object) -> bool:
    """Whether ``value`` is an item identifier: 1-64 of ``A-Za-z0-9_.:-``, nothing after."""
    return isinstance(value, str) and ID_RE.fullmatch(value) is not None


def is_action_key(value: object) -> bool:
    """Whether ``value`` can be carried as a notification action key: any string of Unicode
    scalar values, without NUL (D-Bus strings cannot hold it), of at most MAX_ACTION_KEY
    characters. Keys are opaque: never shown, only handed back."""
    return (isinstance(value, str) and len(value) <= MAX_ACTION_KEY and "\0" not in value
            and SURROGATES.search(value) is None)


def one_line(untrusted: str, max_len: int) -> str:
    """``untrusted`` as one line of display text for the host desktop (tray title, tooltip
    title, app name, summary, menu and action labels): ``vmsilo.protocol.text``'s cleaning (no
    newline, control, bidi or other format characters), at most ``max_len`` characters."""
    return clean_display_text(untrusted, max_len=max_len)


def body_text(untrusted: str, max_len: int = MAX_BODY) -> str:
    """A notification body or tooltip text for display: lines kept, each line cleaned as
    ``one_line`` (so no bidi override or format character survives), at most ``max_len``
    characters in all."""
    lines = untrusted.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(clean_display_text(line, max_len=max_len) for line in lines)[:max_len]


def notification_body(text: str, *, markup: bool) -> str:
    """``text`` (plain text) encoded for a notification server: escaped as XML character data
    when the server interprets body markup (it advertises ``body-markup`` in
    GetCapabilities, Desktop Notifications Specification 1.2 "Markup"), as it is otherwise."""
    return html.escape(text, quote=False) if markup else text


def unescape_body(encoded: str, *, markup: bool) -> str:
    """The inverse of ``notification_body`` (what a markup server shows)."""
    return html.unescape(encoded) if markup else encoded


class ProtocolViolation(ProtocolError, ValueError):  # noqa: N818 - a violation, named as the spec says
    """What the guest sent is not a valid message; the connection must be closed."""


# --------------------------------------------------------------------------- framing


def encode(message: Mapping[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    if len(body) > MAX_FRAME:
        raise ValueError(f"message of {len(body)} bytes exceeds {MAX_FRAME}")
    return HEADER.pack(len(body)) + body


def frame_length(header: bytes) -> int:
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise ProtocolViolation(f"frame of {length} bytes exceeds {MAX_FRAME}")
    return int(length)


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any]:
    """The next frame's JSON object; IncompleteReadError at the end of the stream,
    ProtocolViolation for a frame that is too long or not a JSON object."""
    header = await reader.readexactly(HEADER.size)
    return parse_frame(await reader.readexactly(frame_length(header)))


def parse_frame(untrusted_body: bytes) -> dict[str, Any]:
    try:
        untrusted = json.loads(untrusted_body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolViolation(f"frame is not UTF-8 JSON: {exc}") from None
    if not isinstance(untrusted, dict):
        raise ProtocolViolation("frame is not a JSON object")
    return untrusted


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Pixmap:
    width: int
    height: int
    argb: bytes  # ARGB32 in network byte order, width*height*4 bytes

    def to_wire(self) -> dict[str, Any]:
        return {"w": self.width, "h": self.height,
                "data": base64.b64encode(self.argb).decode()}  # fmt: skip


@dataclass(frozen=True)
class ItemProps:
    title: str = ""
    tooltip_title: str = ""
    tooltip_text: str = ""
    status: str = "Active"
    category: str = "ApplicationStatus"
    icon_name: str = ""  # informational: the host never uses a guest-chosen theme icon
    pixmaps: tuple[Pixmap, ...] = ()
    has_menu: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {"title": self.title, "tooltipTitle": self.tooltip_title,
                "tooltipText": self.tooltip_text, "status": self.status,
                "category": self.category, "iconName": self.icon_name,
                "pixmaps": [p.to_wire() for p in self.pixmaps], "menu": self.has_menu}  # fmt: skip


@dataclass(frozen=True)
class MenuNode:
    id: int
    label: str = ""
    enabled: bool = True
    visible: bool = True
    type: str = "standard"
    toggle_type: str = ""
    toggle_state: int = -1
    children: tuple[MenuNode, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "label": self.label, "enabled": self.enabled,
                "visible": self.visible, "type": self.type, "toggleType": self.toggle_type,
                "toggleState": self.toggle_state,
                "children": [c.to_wire() for c in self.children]}  # fmt: skip

    def count(self) -> int:
        return 1 + sum(child.count() for child in self.children)


@dataclass(frozen=True)
class ItemAdd:
    item: str
    props: ItemProps


@dataclass(frozen=True)
class ItemUpdate:
    item: str
    props: ItemProps


@dataclass(frozen=True)
class ItemRemove:
    item: str


@dataclass(frozen=True)
class MenuLayout:
    item: str
    root: MenuNode


@dataclass(frozen=True)
class Notify:
    nid: int
    app: str
    summary: str
    body: str
    actions: tuple[tuple[str, str], ...] = ()
    urgency: int = 1
    timeout_ms: int = -1


@dataclass(frozen=True)
class NotifyClose:
    nid: int


FromGuest = ItemAdd | ItemUpdate | ItemRemove | MenuLayout | Notify | NotifyClose


def to_wire(message: FromGuest) -> dict[str, Any]:
    """The guest half's side: a typed message as the JSON object ``encode`` frames."""
    if isinstance(message, ItemAdd | ItemUpdate):
        kind = "item-add" if isinstance(message, ItemAdd) else "item-update"
        return {"t": kind, "id": message.item, "props": message.props.to_wire()}
    if isinstance(message, ItemRemove):
        return {"t": "item-remove", "id": message.item}
    if isinstance(message, MenuLayout):
        return {"t": "menu", "id": message.item, "layout": message.root.to_wire()}
    if isinstance(message, Notify):
        return {"t": "notify", "nid": message.nid, "app": message.app,
                "summary": message.summary, "body": message.body,
                "actions": [list(a) for a in message.actions], "urgency": message.urgency,
                "timeout": message.timeout_ms}  # fmt: skip
    return {"t": "notify-close", "nid": message.nid}


# --------------------------------------------------------------------------- host → guest


def activate(item: str, x: int, y: int, secondary: bool = False) -> dict[str, Any]:
    return {"t": "secondary-activate" if secondary else "activate", "id": item, "x": x, "y": y}


def context_menu(item: str, x: int, y: int) -> dict[str, Any]:
    return {"t": "context-menu", "id": item, "x": x, "y": y}


def scroll(item: str, delta: int, orientation: str) -> dict[str, Any]:
    return {"t": "scroll", "id": item, "delta": delta, "orientation": orientation}


def menu_event(item: str, node: int, event: str = "clicked") -> dict[str, Any]:
    return {"t": "menu-event", "id": item, "node": node, "event": event}


def action_invoked(nid: int, key: str) -> dict[str, Any]:
    return {"t": "action", "nid": nid, "key": key}


def closed(nid: int, reason: int) -> dict[str, Any]:
    return {"t": "closed", "nid": nid, "reason": reason}


# --------------------------------------------------------------------------- validation


def _str(untrusted: Mapping[str, Any], key: str, limit: int, *, default: str | None = None,
         text: bool = True) -> str:
    value = untrusted.get(key, default)
    if not isinstance(value, str):
        raise ProtocolViolation(f"{key} is not a string")
    if len(value) > limit:
        raise ProtocolViolation(f"{key} is longer than {limit} characters")
    if SURROGATES.search(value):
        raise ProtocolViolation(f"{key} is not valid Unicode (a lone surrogate)")
    if text and CONTROL_CHARS.search(value):
        raise ProtocolViolation(f"{key} contains control characters")
    return value


def _int(untrusted: Mapping[str, Any], key: str, low: int, high: int,
         default: int | None = None) -> int:
    value = untrusted.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ProtocolViolation(f"{key} is not an integer in [{low}, {high}]")
    return value


def _bool(untrusted: Mapping[str, Any], key: str, default: bool) -> bool:
    value = untrusted.get(key, default)
    if not isinstance(value, bool):
        raise ProtocolViolation(f"{key} is not a boolean")
    return value


def _one_of(untrusted: Mapping[str, Any], key: str, choices: tuple[str, ...], default: str) -> str:
    value = untrusted.get(key, default)
    if value not in choices:
        raise ProtocolViolation(f"{key} is not one of {', '.join(repr(c) for c in choices)}")
    return str(value)


def _item_id(untrusted: Mapping[str, Any]) -> str:
    value = untrusted.get("id")
    if not is_identifier(value):
        raise ProtocolViolation("id is not an item identifier")
    return str(value)


def _object(untrusted: object, what: str) -> Mapping[str, Any]:
    if not isinstance(untrusted, dict):
        raise ProtocolViolation(f"{what} is not an object")
    return untrusted


def _pixmap(untrusted: object) -> Pixmap:
    obj = _object(untrusted, "pixmap")
    width = _int(obj, "w", 1, MAX_ICON_SIDE)
    height = _int(obj, "h", 1, MAX_ICON_SIDE)
    data = obj.get("data")
    if not isinstance(data, str) or len(data) > (MAX_ICON_SIDE**2 * 4 * 4) // 3 + 4:
        raise ProtocolViolation("pixmap data is not base64 of an icon")
    try:
        argb = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolViolation("pixmap data is not base64") from None
    if len(argb) != width * height * 4:
        raise ProtocolViolation(f"pixmap data is {len(argb)} bytes, not {width}x{height}x4")
    return Pixmap(width, height, argb)


def _props(untrusted: object) -> ItemProps:
    obj = _object(untrusted, "props")
    pixmaps = obj.get("pixmaps", [])
    if not isinstance(pixmaps, list) or len(pixmaps) > MAX_PIXMAPS:
        raise ProtocolViolation(f"pixmaps is not a list of at most {MAX_PIXMAPS}")
    return ItemProps(
        title=_str(obj, "title", MAX_TITLE, default=""),
        tooltip_title=_str(obj, "tooltipTitle", MAX_TITLE, default=""),
        tooltip_text=_str(obj, "tooltipText", MAX_TOOLTIP, default=""),
        status=_one_of(obj, "status", STATUSES, "Active"),
        category=_one_of(obj, "category", CATEGORIES, "ApplicationStatus"),
        icon_name=_str(obj, "iconName", MAX_ID * 2, default=""),
        pixmaps=tuple(_pixmap(p) for p in pixmaps),
        has_menu=_bool(obj, "menu", False),
    )


def _menu(untrusted: object, depth: int, budget: list[int]) -> MenuNode:
    if depth > MAX_MENU_DEPTH:
        raise ProtocolViolation(f"menu is deeper than {MAX_MENU_DEPTH}")
    budget[0] -= 1
    if budget[0] < 0:
        raise ProtocolViolation(f"menu has more than {MAX_MENU_NODES} entries")
    obj = _object(untrusted, "menu entry")
    children = obj.get("children", [])
    if not isinstance(children, list):
        raise ProtocolViolation("menu children is not a list")
    return MenuNode(
        id=_int(obj, "id", 0, 2**31 - 1),
        label=_str(obj, "label", MAX_LABEL, default=""),
        enabled=_bool(obj, "enabled", True),
        visible=_bool(obj, "visible", True),
        type=_one_of(obj, "type", MENU_TYPES, "standard"),
        toggle_type=_one_of(obj, "toggleType", TOGGLE_TYPES, ""),
        toggle_state=_int(obj, "toggleState", -1, 1, default=-1),
        children=tuple(_menu(child, depth + 1, budget) for child in children),
    )


def _actions(untrusted: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(untrusted, list) or len(untrusted) > MAX_ACTIONS:
        raise ProtocolViolation(f"actions is not a list of at most {MAX_ACTIONS}")
    actions = []
    for pair in untrusted:
        if (not isinstance(pair, list) or len(pair) != 2
                or not all(isinstance(part, str) for part in pair)):
            raise ProtocolViolation("an action is not a [key, label] pair")
        key, label = pair
        if not is_action_key(key):
            raise ProtocolViolation(f"an action key is longer than {MAX_ACTION_KEY} characters,"
                                    " holds NUL or is not valid Unicode")
        if (len(label) > MAX_LABEL or CONTROL_CHARS.search(label)
                or SURROGATES.search(label)):
            raise ProtocolViolation("an action label is malformed")
        actions.append((key, label))
    return tuple(actions)


def decode_from_guest(untrusted: Mapping[str, Any]) -> FromGuest:
    """A typed message, or ProtocolViolation naming the first bad field."""
    kind = untrusted.get("t")
    if kind in ("item-add", "item-update"):
        cls = ItemAdd if kind == "item-add" else ItemUpdate
        return cls(_item_id(untrusted), _props(untrusted.get("props")))
    if kind == "item-remove":
        return ItemRemove(_item_id(untrusted))
    if kind == "menu":
        return MenuLayout(_item_id(untrusted), _menu(untrusted.get("layout"), 0, [MAX_MENU_NODES]))
    if kind == "notify":
        return Notify(
            nid=_int(untrusted, "nid", 1, 2**32 - 1),
            app=_str(untrusted, "app", MAX_APP, default=""),
            summary=_str(untrusted, "summary", MAX_SUMMARY),
            body=_str(untrusted, "body", MAX_BODY, default=""),
            actions=_actions(untrusted.get("actions", [])),
            urgency=_int(untrusted, "urgency", 0, 2, default=1),
            timeout_ms=_int(untrusted, "timeout", -1, MAX_TIMEOUT_MS, default=-1),
        )
    if kind == "notify-close":
        return NotifyClose(_int(untrusted, "nid", 1, 2**32 - 1))
    raise ProtocolViolation(f"unknown message type {str(kind)[:40]!r}")


# What the guest half accepts from the host (the host is trusted, but a malformed message is
# still refused rather than acted on).
@dataclass(frozen=True)
class FromHost:
    kind: str
    item: str = ""
    nid: int = 0
    x: int = 0
    y: int = 0
    delta: int = 0
    orientation: str = "vertical"
    node: int = 0
    event: str = "clicked"
    key: str = ""
    reason: int = 0


def decode_from_host(untrusted: Mapping[str, Any]) -> FromHost:
    kind = untrusted.get("t")
    if kind in ("activate", "secondary-activate", "context-menu"):
        return FromHost(str(kind), item=_item_id(untrusted),
                        x=_int(untrusted, "x", -(2**31), 2**31 - 1),
                        y=_int(untrusted, "y", -(2**31), 2**31 - 1))
    if kind == "scroll":
        return FromHost("scroll", item=_item_id(untrusted),
                        delta=_int(untrusted, "delta", -(2**31), 2**31 - 1),
                        orientation=_one_of(untrusted, "orientation", ORIENTATIONS, "vertical"))
    if kind == "menu-event":
        return FromHost("menu-event", item=_item_id(untrusted),
                        node=_int(untrusted, "node", 0, 2**31 - 1),
                        event=_one_of(untrusted, "event", ("clicked", "hovered", "opened",
                                                           "closed"), "clicked"))
    if kind == "action":
        key = untrusted.get("key")
        if not is_action_key(key):
            raise ProtocolViolation("key is not an action key")
        return FromHost("action", nid=_int(untrusted, "nid", 1, 2**32 - 1), key=str(key))
    if kind == "closed":
        return FromHost("closed", nid=_int(untrusted, "nid", 1, 2**32 - 1),
                        reason=_int(untrusted, "reason", 1, 4))
    raise ProtocolViolation(f"unknown message type {str(kind)[:40]!r}")


class RateLimit:
    """A token bucket: ``rate`` messages a second on average, bursts up to ``burst``.
    ``allow(now)`` (``now`` in seconds, monotonic) takes a token if there is one; ``wait(now)``
    is how many seconds until the next token."""

    def __init__(self, rate: float = 50.0, burst: int = 200) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp: float | None = None

    def allow(self, now: float) -> bool:
        if self.stamp is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    def wait(self, now: float) -> float:
        if self.stamp is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate
