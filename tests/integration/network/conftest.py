"""Throwaway network namespaces for the network tests: each test gets fresh ones, deleted
afterwards whatever happened (deleting a namespace takes its TAPs, bridges and tables along)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator

import pytest

from vmsilo.config import parse_config, resolve
from vmsilo.config.resolved import Resolved
from vmsilo.host import proc

_counter = itertools.count()


def sh(netns: str, *command: str) -> str:
    return proc.run(["ip", "netns", "exec", netns, *command]).stdout


def resolved_config(text: str) -> Resolved:
    return resolve(parse_config(text))


@pytest.fixture
def make_netns() -> Iterator[Callable[[], str]]:
    created: list[str] = []

    def make() -> str:
        name = f"vmsilo-test-{os.getpid()}-{next(_counter)}"
        proc.run(["ip", "netns", "add", name])
        created.append(name)
        sh(name, "ip", "link", "set", "lo", "up")
        return name

    yield make
    for name in created:
        proc.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def netns(make_netns: Callable[[], str]) -> str:
    return make_netns()
