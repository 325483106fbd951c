"""README's Configuration section documents every option of the models, and its example
config is valid and is the example the tests use."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from pydantic import BaseModel

from vmsilo.config import parse_config
from vmsilo.config.model import (
    GuestConfigModule,
    GuestFile,
    Interface,
    SharedDirectory,
    UsbDevice,
    VmConfig,
    VmsiloConfig,
)

README = Path(__file__).parents[3] / "README.md"
EXAMPLE = Path(__file__).parent / "example.toml"


def configuration_section() -> str:
    text = README.read_text()
    start = text.index("## Configuration")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def documented_options() -> set[str]:
    """The first cell of every table row: `` `name` ``."""
    return set(re.findall(r"^\| `([^`]+)` \|", configuration_section(), re.MULTILINE))


def _nested_model(annotation: object) -> type[BaseModel] | None:
    candidates = [annotation, *typing.get_args(annotation)]
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def option_names(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Dotted option names; nested tables are followed, keyed tables and lists are not
    (their entries have tables of their own)."""
    names = set()
    for name, field in model.model_fields.items():
        dotted = prefix + (field.alias or name)
        origin = typing.get_origin(field.annotation)
        nested = _nested_model(field.annotation)
        if origin not in (dict, list) and nested is not None:
            names |= option_names(nested, dotted + ".")
        if nested is None or origin in (dict, list) or nested is not field.annotation:
            # A leaf, a keyed table or list, or an optional table (``tap``, ``rootDisk``):
            # documented by its own row. A plain sub-table is documented by its leaves.
            names.add(dotted)
    return names


def test_every_option_is_in_the_readme_tables() -> None:
    documented = documented_options()
    expected = (
        option_names(VmsiloConfig)
        | option_names(VmConfig)
        | option_names(Interface)
        | option_names(SharedDirectory)
        | option_names(UsbDevice)
        | option_names(GuestConfigModule)
        | option_names(GuestFile, "files[].")
        | {"via"}
    )
    missing = sorted(expected - documented)
    assert missing == []
    assert "gpu.context-types" in expected and "vmsilo-balloond.psiCeiling" in expected


def test_readme_example_is_the_tested_example() -> None:
    blocks = re.findall(r"```toml\n(.*?)```", configuration_section(), re.DOTALL)
    assert blocks[0] == EXAMPLE.read_text()
    config = parse_config(blocks[0])
    assert sorted(config.vms) == ["banking", "personal", "shopping", "sys-net"]
    assert config.vms["sys-net"].network.is_netvm


def test_readme_tap_example_is_valid() -> None:
    blocks = re.findall(r"```toml\n(.*?)```", configuration_section(), re.DOTALL)
    config = parse_config('user = "alice"\n' + blocks[1])
    assert config.vms["work"].network.interfaces["wan"].tap is not None
