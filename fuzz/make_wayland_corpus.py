"""Writes fuzz/corpus/wayland: valid client streams for the prepared session of
``vmsilo.testing.wayland`` (first byte: descriptor count)."""

from pathlib import Path

from vmsilo.testing.wayland import request
from vmsilo.wayland.protocols import load_tables
from vmsilo.wayland.wire import Fd, NewId


def main() -> None:
    t = load_tables()
    out = Path(__file__).parent / "corpus" / "wayland"
    out.mkdir(parents=True, exist_ok=True)
    cases = {
        "title": b"\0" + request(t, 7, "xdg_toplevel", "set_title", "a window \u202e title")
        + request(t, 7, "xdg_toplevel", "set_app_id", "org.example.App"),
        "shm_pool": b"\1" + request(t, 2, "wl_registry", "bind", 2, NewId(8, "wl_shm", 1))
        + request(t, 8, "wl_shm", "create_pool", NewId(9), Fd(0), 4096)
        + request(t, 9, "wl_shm_pool", "create_buffer", NewId(10), 0, 16, 16, 64, 0),
        "decoration": b"\0" + request(t, 2, "wl_registry", "bind", 5,
                                      NewId(8, "zxdg_decoration_manager_v1", 1))
        + request(t, 8, "zxdg_decoration_manager_v1", "get_toplevel_decoration", NewId(9), 7)
        + request(t, 9, "zxdg_toplevel_decoration_v1", "set_mode", 1),
        "hidden_bind": b"\0" + request(t, 2, "wl_registry", "bind", 4,
                                       NewId(8, "weston_screenshooter", 1)),
        "clipboard": b"\0" + request(t, 2, "wl_registry", "bind", 6,
                                     NewId(8, "wl_data_device_manager", 3))
        + request(t, 8, "wl_data_device_manager", "create_data_source", NewId(9))
        + request(t, 9, "wl_data_source", "offer", "text/plain"),
        "commit": b"\0" + request(t, 5, "wl_surface", "damage", 0, 0, 10, 10)
        + request(t, 5, "wl_surface", "frame", NewId(8))
        + request(t, 5, "wl_surface", "commit"),
    }
    for name, data in cases.items():
        (out / name).write_bytes(data)


if __name__ == "__main__":
    main()
