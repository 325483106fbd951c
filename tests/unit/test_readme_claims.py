"""README's opening "What works today" / "Not yet" and its Commands table, checked against the
commands that exist (pyproject's entry points and the ``vmsilo`` subcommand tree), and its
set-up package list against ``scripts/bootstrap.sh``. Issue 15: the opening called the desktop
menu and guest windows "Not yet" long after ``vmsilo desktop install`` and the Wayland path
existed, and the set-up list lacked ``uidmap``."""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path

import pytest

from vmsilo.cli.main import build_parser

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()

# Entry points a user never types, with why: not listed among what works.
INTERNAL = {
    "vmsilo-agent": "runs inside the guest",
    "vmsilo-wayland-seccontext": "vmsilod's helper",
}


def entry_points() -> set[str]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    return set(pyproject["project"]["scripts"])


def vmsilo_commands() -> set[tuple[str, ...]]:
    """Every leaf of the ``vmsilo`` argparse tree: ("image", "build"), ("status",), …"""
    leaves: set[tuple[str, ...]] = set()

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            leaves.add(path)
        for action in subs:
            for name, sub in action.choices.items():
                walk(sub, (*path, name))

    walk(build_parser(), ())
    return leaves


def user_commands() -> set[str]:
    """What a user runs: entry points (``vmsilo`` as its subcommands), internal ones out."""
    names = {n for n in entry_points() - set(INTERNAL) if n != "vmsilo"}
    return names | {"vmsilo " + " ".join(path) for path in vmsilo_commands()}


def command_of(span: str) -> str | None:
    """The command a backticked span names (``vmsilo image build [VM…]`` -> ``vmsilo image
    build``), None when it names none (an option, a path, ``vmsilod``)."""
    words = span.split()
    if not words or words[0] not in entry_points():
        return None
    if words[0] != "vmsilo":
        return words[0]
    path = []
    for word in words[1:]:
        if not re.fullmatch(r"[a-z]+", word):
            break
        path.append(word)
    return " ".join(["vmsilo", *path])


def opening() -> tuple[str, str]:
    """(what works today, not yet) paragraphs of the README's opening."""
    match = re.search(r"\*\*What works today:\*\*(.*?)(?:\*\*Not yet:\*\*(.*?))?\n\n", README,
                      re.DOTALL)
    assert match, "README has no **What works today:** paragraph"
    return match.group(1), match.group(2) or ""


def spans(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", text)


def headings() -> set[str]:
    """GitHub's anchors of the README's headings."""
    anchors = set()
    for title in re.findall(r"^#+ (.+)$", README, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def commands_table() -> list[list[str]]:
    """Backticked commands of the first cell of each row of the Commands table."""
    section = README.split("## Commands\n", 1)[1].split("\n## ", 1)[0]
    table = section.split("| command | what it does |", 1)[1].split("\n\n", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    return [[c for c in map(command_of, spans(row.split(" | ")[0])) if c] for row in rows]


def test_every_command_named_as_working_exists() -> None:
    works, _ = opening()
    named = [c for c in map(command_of, spans(works)) if c is not None]
    assert named, "the opening names no command"
    unknown = sorted(set(named) - user_commands())
    assert not unknown, f"README's opening names commands that do not exist: {unknown}"


def test_every_command_that_exists_is_named_as_working() -> None:
    works, _ = opening()
    named = {c for c in map(command_of, spans(works)) if c is not None}
    missing = sorted(user_commands() - named)
    assert not missing, f"README's 'What works today' leaves out existing commands: {missing}"


def test_not_yet_names_nothing_that_exists() -> None:
    _, not_yet = opening()
    existing = [c for c in map(command_of, spans(not_yet)) if c in user_commands()]
    # "accepted and validated by `vmsilo config check`" style mentions are fine; a command
    # that *is* the missing feature is not. None is named at all today.
    assert not existing, f"'Not yet' names existing commands: {existing}"
    # The instance: the menu and guest windows exist.
    assert "vmsilo desktop install" in user_commands()
    assert "windows-on-your-desktop" in headings()
    assert not re.search(r"desktop menu|guest windows", not_yet, re.IGNORECASE)
    works, _ = opening()
    assert "`vmsilo desktop install`" in works
    assert "(#windows-on-your-desktop)" in works


def test_links_of_the_opening_lead_to_sections() -> None:
    works, not_yet = opening()
    anchors = re.findall(r"\]\(#([^)]+)\)", works + not_yet)
    assert anchors
    assert sorted(set(anchors) - headings()) == []


def test_commands_table_matches_the_commands_that_exist() -> None:
    rows = commands_table()
    listed = {c for row in rows for c in row}
    assert all(rows), "a Commands row names no command"
    assert sorted(listed - user_commands() - set(INTERNAL)) == []
    assert sorted(user_commands() - listed) == []


def test_set_up_package_list_is_bootstrap_s() -> None:
    script = (REPO / "scripts/bootstrap.sh").read_text()
    block = script.split("declare -A PACKAGES=(", 1)[1].split("\n)", 1)[0]
    in_script = set(re.findall(r"^\s*\[([a-z0-9.+-]+)\]=", block, re.MULTILINE))
    setup = README.split("## The two set-up commands", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"the missing Debian\s+packages \(`([^`]+)`", setup)
    assert match, "README's set-up section lists no packages"
    in_readme = set(match.group(1).split())
    assert in_readme == in_script
    # image builds as a user need newuidmap/newgidmap
    assert "uidmap" in in_script


@pytest.mark.parametrize("span, command", [
    ("vmsilo image build [VM…] [--rebuild]", "vmsilo image build"),
    ("vm-run banking firefox", "vm-run"),
    ("vmsilod", None),
    ("--config PATH", None),
])
def test_command_of(span: str, command: str | None) -> None:
    assert command_of(span) == command
