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
}


def main() -> None:
    HERE.mkdir(parents=True, exist_ok=True)
    for name, messages in SEEDS.items():
        (HERE / name).write_bytes(b"".join(wire.encode(wire.to_wire(m)) for m in messages))


if __name__ == "__main__":
    main()
