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
