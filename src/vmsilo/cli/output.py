"""How the commands print tables: fitted to a terminal, unwrapped into a pipe or a file (so
that scripts and logs see each row on one line)."""

from __future__ import annotations

import sys

from rich.console import Console

UNWRAPPED_WIDTH = 200


def output_console() -> Console:
    return Console(file=sys.stdout, width=None if sys.stdout.isatty() else UNWRAPPED_WIDTH)
