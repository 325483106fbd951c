"""Finding, reading and validating the config file.

Path choice: ``--config``, else ``$VMSILO_CONFIG``, else ``/etc/vmsilo/vmsilo.toml``, else the
embedded default (one offline VM ``demo``). Validation collects every problem — pydantic's
field errors turned into ``<dotted.path>: <what>; <fix>`` lines, then the cross-field checks
over every VM that parsed — and raises one ``ConfigError`` holding them all. Nothing here has
side effects beyond reading the file.
"""

from __future__ import annotations

import difflib
import os
import pwd
import tomllib
import types
import typing
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from vmsilo.config.checks import check_config, path_key
from vmsilo.config.model import VmConfig, VmsiloConfig
from vmsilo.errors import UserError

DEFAULT_CONFIG_PATH = Path("/etc/vmsilo/vmsilo.toml")
CONFIG_ENV = "VMSILO_CONFIG"


class ConfigError(UserError):
    """The config is invalid; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str], source: Path | None = None) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
        self.source = source


@dataclass(frozen=True)
class LoadedConfig:
    config: VmsiloConfig
    source: Path | None  # None for the embedded default
    is_default: bool


def load_config(path: Path | None = None) -> LoadedConfig:
    """Load and validate the config chosen as described in the module docstring."""
    if path is None and os.environ.get(CONFIG_ENV):
        path = Path(os.environ[CONFIG_ENV])
        origin = f"${CONFIG_ENV}"
    else:
        origin = "--config"
    if path is None:
        if not DEFAULT_CONFIG_PATH.exists():
            return LoadedConfig(config=default_config(), source=None, is_default=True)
        path = DEFAULT_CONFIG_PATH
        origin = "the default location"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(
            f"config file {path} (from {origin}) does not exist; create it or name another file"
        ) from None
    except IsADirectoryError:
        raise UserError(f"config file {path} (from {origin}) is a directory; name a file") from None
    except PermissionError:
        raise UserError(
            f"config file {path} is not readable; run as root or make it readable"
        ) from None
    except UnicodeDecodeError:
        raise UserError(f"config file {path} is not UTF-8 text; save it as UTF-8") from None
    return LoadedConfig(config=parse_config(text, source=path), source=path, is_default=False)


def parse_config(text: str, *, source: Path | None = None) -> VmsiloConfig:
    """Parse TOML text and validate it; raises ``ConfigError`` listing every problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        where = str(source) if source else "config"
        raise ConfigError([f"{where}: TOML syntax error: {exc}; fix the syntax"], source) from None
    try:
        return validate_config(data)
    except ConfigError as exc:
        raise ConfigError(exc.problems, source) from None


def validate_config(data: dict[str, Any]) -> VmsiloConfig:
    """Validate parsed TOML; raises ``ConfigError`` listing every problem."""
    problems: list[str] = []
    settings: VmsiloConfig | None = None
    try:
        settings = VmsiloConfig.model_validate({k: v for k, v in data.items() if k != "vms"})
    except ValidationError as exc:
        problems += validation_problems(exc, (), VmsiloConfig)
    raw_vms = data.get("vms", {})
    vms: dict[str, VmConfig] = {}
    if not isinstance(raw_vms, dict):
        problems.append(
            f"vms: expected a table of VMs, got {type(raw_vms).__name__}; "
            "write one [vms.<name>] section per VM"
        )
        raw_vms = {}
    for name, raw_vm in raw_vms.items():
        try:
            vms[name] = VmConfig.model_validate(raw_vm)
        except ValidationError as exc:
            problems += validation_problems(exc, ("vms", name), VmConfig)
    if settings is not None:
        config = settings.model_copy(update={"vms": vms})
    else:
        config = VmsiloConfig.model_construct(user="", vms=vms)
    problems += check_config(config, all_vm_names=raw_vms, settings_valid=settings is not None)
    if problems:
        raise ConfigError(problems)
    return config


def invoking_user() -> str:
    """The desktop user: the one behind sudo when run through it, else the current one."""
    sudo_user = os.environ.get("SUDO_USER")
    if os.geteuid() == 0 and sudo_user:
        return sudo_user
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return os.environ.get("USER", "user")


def default_config_text() -> str:
    return resources.files("vmsilo.config").joinpath("default.toml").read_text(encoding="utf-8")


def default_config() -> VmsiloConfig:
    """The embedded default config, owned by the invoking user."""
    data = tomllib.loads(default_config_text())
    data.setdefault("user", invoking_user())
    return validate_config(data)


# ---------------------------------------------------------------- pydantic errors → lines


def format_path(loc: tuple[str | int, ...]) -> str:
    text = ""
    for item in loc:
        if isinstance(item, int):
            text += f"[{item}]"
        else:
            text += ("." if text else "") + path_key(item)
    return text or "(top level)"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return str(value)


def _unwrap(annotation: Any) -> Any:
    """Strip Annotated and Optional/unions down to the part that can hold nested keys."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            nested = [
                m
                for m in members
                if typing.get_origin(m) in (dict, list)
                or (isinstance(m, type) and issubclass(m, BaseModel))
            ]
            annotation = nested[0] if nested else members[0]
        else:
            return annotation


def _model_at(root: type[BaseModel], loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The model class that validates the table at ``loc`` (for did-you-mean hints)."""
    current: Any = root
    for item in loc:
        current = _unwrap(current)
        origin = typing.get_origin(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            fields = {f.alias or n: f for n, f in current.model_fields.items()}
            if item not in fields:
                return None
            current = fields[item].annotation
        elif origin is dict:
            current = typing.get_args(current)[1]
        elif origin is list:
            current = typing.get_args(current)[0]
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unknown_key_hint(root: type[BaseModel], loc: tuple[str | int, ...]) -> str:
    model = _model_at(root, loc[:-1])
    if model is None:
        return "remove it or fix its spelling"
    known = sorted(f.alias or n for n, f in model.model_fields.items())
    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
    if close:
        return f"did you mean {close[0]!r}? (or remove it)"
    return f"remove it or fix its spelling; known options here: {', '.join(known)}"


def _describe(error: ErrorDetails, root: type[BaseModel]) -> str:
    kind = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    got = f"got {_toml_value(value)}"
    if kind == "missing":
        return "required option is missing; add it"
    if kind == "extra_forbidden":
        return f"unknown option; {_unknown_key_hint(root, tuple(error['loc']))}"
    if kind == "bool_type":
        return f"expected true or false, {got}; write true or false without quotes"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"expected an integer, {got}; write a whole number without quotes"
    if kind == "string_type":
        return f"expected a string, {got}; write it in quotes"
    if kind == "list_type":
        return f"expected a list, {got}; write it as [ ... ]"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"expected a table, {got}; write it as a table {{ ... }}"
    if kind == "literal_error":
        return f"{_toml_value(value)} is not allowed; use one of {ctx.get('expected')}"
    if kind in ("greater_than_equal", "greater_than"):
        bound = ctx.get("ge", ctx.get("gt"))
        return f"{_toml_value(value)} is too small; use a value of at least {bound}"
    if kind in ("less_than_equal", "less_than"):
        bound = ctx.get("le", ctx.get("lt"))
        return f"{_toml_value(value)} is too large; use a value of at most {bound}"
    if kind == "string_too_short":
        return "must not be empty; give a value or remove the option"
    if kind == "string_pattern_mismatch":
        return f"{_toml_value(value)} has the wrong form; it must match {ctx.get('pattern')}"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return f"{error['msg']}; fix this value"


def validation_problems(
    exc: ValidationError, prefix: tuple[str | int, ...], root: type[BaseModel]
) -> list[str]:
    """One line per pydantic error, with the dotted path spelled in the config's aliases."""
    lines = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        if loc and loc[-1] == "[key]":
            loc = loc[:-1]
        line = f"{format_path(prefix + loc)}: {_describe(error, root)}"
        if line not in lines:
            lines.append(line)
    return lines
