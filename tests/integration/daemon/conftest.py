"""The core under test (``tests/support/fake_core.py``), cleaned up after each test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fake_core import Core


@pytest.fixture
def core(tmp_path: Path) -> Iterator[Core]:
    made = Core(tmp_path)
    try:
        yield made
    finally:
        made.close()
