"""Regenerate the D-Bus proxy's seed corpus from valid guest messages:
``python fuzz/make_dbusproxy_corpus.py``."""

from pathlib import Path

from vmsilo.protocol import dbusproxy as wire

HERE = Path(__file__).parent / "corpus" / "dbusproxy"

ICON = wire.Pixmap(2, 2, bytes(range(16)))
MENU = wire.MenuNode(0, children=(wire.MenuNode(1, "Open"), wire.MenuNode(2, type="separator"),
                                  wire.MenuNode(3, "Quit", toggle_type="checkmark",
                                                toggle_state=1)))
SEEDS = {
    "notify": [wire.Notify(1, "Mail", "New mail", "from <b>Bob</b>", (("open", "Open"),), 2,
                           5000), wire.NotifyClose(1)],
    "tray": [wire.ItemAdd("item1", wire.ItemProps("Mail", "Mail", "3 unread", "Active",
                                                  "Communications", "mail", (ICON,), True)),
             wire.MenuLayout("item1", MENU),
             wire.ItemUpdate("item1", wire.ItemProps(title="Mail (4)")),
             wire.ItemRemove("item1")],
    # Issue 15: strings that must be re-encoded where they land (line and paragraph
    # separators, bidi overrides and isolates, zero-width characters, markup), GLib action
    # keys.
    "display": [wire.Notify(2, "Mail\u2028[banking]", "Hi\n[banking]\u202e",
                            "one\u2029two\r\nthree <b>&amp;</b>\u2066",
                            (("app.reply('x')", "Reply\u200b"), ("default", "")), 1, -1),
                wire.ItemAdd("item2", wire.ItemProps("T\u2028[banking]", "\u202ex",
                                                     "a\u2067b\nc")),
                wire.MenuLayout("item2", wire.MenuNode(0, children=(
                    wire.MenuNode(1, "Open\u2029[banking]"),)))],
}
# Frames no encoder can produce: a lone surrogate, an identifier with a trailing newline.
RAW = {
    "surrogate": [b'{"t":"notify","nid":1,"summary":"\\ud800"}',
                  b'{"t":"action","nid":1,"key":"\\udfff"}'],
    "newline-id": [b'{"t":"item-add","id":"item1\\n","props":{}}',
                   b'{"t":"activate","id":"item1\\n","x":0,"y":0}'],
}


def main() -> None:
    HERE.mkdir(parents=True, exist_ok=True)
    for name, messages in SEEDS.items():
        (HERE / name).write_bytes(b"".join(wire.encode(wire.to_wire(m)) for m in messages))
    for name, bodies in RAW.items():
        (HERE / name).write_bytes(b"".join(wire.HEADER.pack(len(b)) + b for b in bodies))


if __name__ == "__main__":
    main()
