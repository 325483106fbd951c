"""Guest code runs on the guest's own python3 with nothing installed: everything a guest
service's module imports, transitively, must be standard library, a library copied into the
image (dbus_next), or vmsilo code that the image holds (``AGENT_PARTS``) — never host code
(checked on the AST, without importing anything). The entry points are every module the
image's units start (``python3 -m vmsilo.…`` in ``image/guest.py``)."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

import vmsilo
from vmsilo.image import guest
from vmsilo.image.spec import AGENT_PARTS, GUEST_LIBRARIES

PACKAGE_ROOT = Path(vmsilo.__file__).parent


def guest_entry_points() -> list[str]:
    source = Path(guest.__file__).read_text()
    return sorted(set(re.findall(r"python3 -m (vmsilo(?:\.[a-z_]+)+)", source)))


def in_image(module: str) -> bool:
    """Whether the image holds ``module``'s file (the parts of the package it copies)."""
    if module == "vmsilo":
        return True
    rel = module_file(module).relative_to(PACKAGE_ROOT)
    return rel.parts[0] in AGENT_PARTS


def module_file(name: str) -> Path:
    rel = Path(*name.split(".")[1:])
    package = PACKAGE_ROOT / rel / "__init__.py"
    return package if package.exists() else (PACKAGE_ROOT / rel).with_suffix(".py")


def imports_of(name: str) -> set[str]:
    tree = ast.parse(module_file(name).read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                if candidate.startswith("vmsilo.") and module_file(candidate).exists():
                    found.add(candidate)
    return found


def closure(start: str) -> tuple[set[str], set[str]]:
    ours: set[str] = set()
    others: set[str] = set()
    todo = [start]
    while todo:
        name = todo.pop()
        if name in ours:
            continue
        ours.add(name)
        for imported in imports_of(name):
            if imported == "vmsilo" or imported.startswith("vmsilo."):
                parts = imported.split(".")
                todo.extend(".".join(parts[:i]) for i in range(1, len(parts) + 1))
            else:
                others.add(imported.split(".")[0])
    return ours, others


def test_the_units_start_the_guest_services() -> None:
    assert {"vmsilo.agent", "vmsilo.agent.netconf", "vmsilo.agent.shares",
            "vmsilo.agent.wayland", "vmsilo.dbusproxy.guest_main"} <= set(guest_entry_points())


@pytest.mark.parametrize("entry", guest_entry_points())
def test_guest_services_import_only_stdlib_guest_libraries_and_guest_code(entry: str) -> None:
    start = f"{entry}.__main__" if module_file(entry).name == "__init__.py" else entry
    ours, others = closure(start)
    third_party = sorted(m for m in others
                         if m not in sys.stdlib_module_names and m not in GUEST_LIBRARIES)
    assert third_party == [], f"{entry} imports non-stdlib modules: {third_party}"
    outside = sorted(m for m in ours if not in_image(m))
    assert outside == [], f"{entry} imports host-side vmsilo modules: {outside}"


def test_the_check_finds_host_code() -> None:
    # Host modules are what the check exists to catch: it must see them.
    ours, _ = closure("vmsilo.daemon.vm")
    assert sorted(m for m in ours if not in_image(m))
    ours, _ = closure("vmsilo.channel.exec_client")
    assert "vmsilo.channel.transports" in ours  # the scan follows vmsilo imports at all
