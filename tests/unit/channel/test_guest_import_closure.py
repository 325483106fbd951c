"""The guest agent runs on the guest's own python3 with nothing installed: everything it
imports, transitively, must be standard library or vmsilo guest code (checked on the AST,
without importing anything)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import vmsilo

PACKAGE_ROOT = Path(vmsilo.__file__).parent
GUEST_MODULES_ALLOWED = (
    "vmsilo",
    "vmsilo.agent",
    "vmsilo.protocol",
    "vmsilo.channel",
    "vmsilo.channel.stream",
    "vmsilo.channel.mux",
    "vmsilo.channel.guest_ports",
)


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
    todo = [start, "vmsilo.agent.__main__"]
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


def test_agent_imports_only_stdlib_and_guest_code() -> None:
    ours, others = closure("vmsilo.agent.main")
    assert "vmsilo.agent.exec_service" in ours and "vmsilo.protocol.exec" in ours
    third_party = sorted(m for m in others if m not in sys.stdlib_module_names)
    assert third_party == [], f"the agent imports non-stdlib modules: {third_party}"
    outside = sorted(
        m for m in ours if not any(m == a or m.startswith(a + ".") for a in GUEST_MODULES_ALLOWED)
    )
    assert outside == [], f"the agent imports host-side vmsilo modules: {outside}"


def test_scanner_sees_non_stdlib_imports() -> None:
    # The closure of the host exec client reaches the host transports, which the guest must
    # never need: proves the scan follows vmsilo imports at all.
    ours, _ = closure("vmsilo.channel.exec_client")
    assert "vmsilo.channel.transports" in ours
