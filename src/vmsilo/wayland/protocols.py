"""Wayland protocol tables, read from the protocol XML files installed on the host.

The filter needs, for every interface a VM may use, the argument types of each request and
event: that is what tells it where a message's strings, object ids and file descriptors are.
The tables come from the same XML files compositors are built from (``wayland.xml`` from
libwayland, the rest from wayland-protocols), so they match the host's definitions; nothing is
hand-written. An interface whose XML is not installed cannot be described, so the filter does not
offer it.
"""

from __future__ import annotations

import functools
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# Where distributions install them (libwayland-dev and wayland-protocols on Debian).
DEFAULT_XML_DIRS = (Path("/usr/share/wayland"), Path("/usr/share/wayland-protocols"))

ARG_TYPES = frozenset({"int", "uint", "fixed", "string", "object", "new_id", "array", "fd"})


class ProtocolTableError(ValueError):
    """An XML file does not describe a protocol we can use."""


@dataclass(frozen=True)
class Arg:
    name: str
    type: str  # one of ARG_TYPES
    interface: str | None = None  # for object/new_id; None for bind-style new_id
    nullable: bool = False


@dataclass(frozen=True)
class Message:
    name: str
    args: tuple[Arg, ...]
    since: int = 1
    destructor: bool = False

    @functools.cached_property
    def fd_count(self) -> int:
        return sum(1 for arg in self.args if arg.type == "fd")


@dataclass(frozen=True)
class Interface:
    name: str
    version: int
    requests: tuple[Message, ...]
    events: tuple[Message, ...]


def _message(element: ET.Element, where: str) -> Message:
    name = element.get("name") or ""
    args = []
    for arg in element.findall("arg"):
        kind = arg.get("type", "")
        if kind not in ARG_TYPES:
            raise ProtocolTableError(
                f"{where}.{name}: argument type {kind!r} is not a Wayland type")
        args.append(Arg(arg.get("name", ""), kind, arg.get("interface"),
                        arg.get("allow-null") == "true"))
    return Message(name, tuple(args), int(element.get("since", "1")),
                   element.get("type") == "destructor")


def parse_protocol(path: Path) -> list[Interface]:
    try:
        root = ET.parse(path).getroot()  # local files installed by the system
    except ET.ParseError as exc:
        raise ProtocolTableError(f"{path}: {exc}") from None
    if root.tag != "protocol":
        raise ProtocolTableError(f"{path}: not a Wayland protocol description")
    interfaces = []
    for element in root.findall("interface"):
        name = element.get("name") or ""
        interfaces.append(Interface(
            name, int(element.get("version", "1")),
            tuple(_message(e, name) for e in element.findall("request")),
            tuple(_message(e, name) for e in element.findall("event"))))
    return interfaces


def xml_files(dirs: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    for directory in dirs:
        if directory.is_dir():
            files.extend(sorted(directory.rglob("*.xml")))
    return files


def load_tables(dirs: Iterable[Path] = DEFAULT_XML_DIRS) -> dict[str, Interface]:
    """Every interface described under ``dirs``. The first description of a name wins, and
    files are read core first, then stable, staging, unstable: the deprecated xdg-shell
    unstable v5 also defines an ``xdg_surface``, which must not replace the stable one."""
    tables: dict[str, Interface] = {}
    for path in xml_files(dirs):
        for interface in parse_protocol(path):
            tables.setdefault(interface.name, interface)
    return tables


@functools.cache
def system_tables() -> dict[str, Interface]:
    return load_tables()
