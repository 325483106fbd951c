"""Building Wayland messages by name, for tests and fuzz targets of the filter."""

from __future__ import annotations

from typing import Any

from vmsilo.wayland.protocols import Interface
from vmsilo.wayland.wire import encode


def request(tables: dict[str, Interface], object_id: int, interface: str, name: str,
            *args: Any) -> bytes:
    return _message(tables[interface].requests, object_id, name, list(args))


def event(tables: dict[str, Interface], object_id: int, interface: str, name: str,
          *args: Any) -> bytes:
    return _message(tables[interface].events, object_id, name, list(args))


def _message(table: Any, object_id: int, name: str, args: list[Any]) -> bytes:
    for opcode, message in enumerate(table):
        if message.name == name:
            data, _ = encode(object_id, opcode, message, args)
            return data
    raise KeyError(name)


# Global numbers the prepared session offers (as a compositor would announce them).
GLOBALS = (
    (1, "wl_compositor", 4),
    (2, "wl_shm", 1),
    (3, "xdg_wm_base", 3),
    (4, "weston_screenshooter", 1),
    (5, "zxdg_decoration_manager_v1", 1),
    (6, "wl_data_device_manager", 3),
)


def prepared_session(vm: str, tables: dict[str, Interface]) -> Any:
    """A session past its set-up: registry 2, compositor 3, xdg_wm_base 4, surface 5,
    xdg_surface 6, toplevel 7 — so that fuzzed input reaches the interesting requests."""
    from vmsilo.wayland.session import Session
    from vmsilo.wayland.wire import NewId

    session = Session(vm, tables)
    session.from_client(request(tables, 1, "wl_display", "get_registry", NewId(2)), [])
    session.from_server(b"".join(event(tables, 2, "wl_registry", "global", *g)
                                 for g in GLOBALS), [])
    session.from_client(b"".join([
        request(tables, 2, "wl_registry", "bind", 1, NewId(3, "wl_compositor", 4)),
        request(tables, 2, "wl_registry", "bind", 3, NewId(4, "xdg_wm_base", 1)),
        request(tables, 3, "wl_compositor", "create_surface", NewId(5)),
        request(tables, 4, "xdg_wm_base", "get_xdg_surface", NewId(6), 5),
        request(tables, 6, "xdg_surface", "get_toplevel", NewId(7)),
    ]), [])
    return session
