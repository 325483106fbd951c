"""Command-line options shared by several commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from vmsilo.config import DEFAULT_CONFIG_PATH


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        metavar="PATH",
        help=f"config file (default: $VMSILO_CONFIG, else {DEFAULT_CONFIG_PATH})",
    )
