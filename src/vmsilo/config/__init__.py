"""The configuration: one TOML file with upstream's options, validated all at once, and the
identities derived from it. Public API: ``load_config``, ``resolve``, ``ConfigError``,
``parse_size``, ``parse_duration``, ``parse_colour`` and the models."""

from vmsilo.config.colours import parse_colour
from vmsilo.config.load import (
    CONFIG_ENV,
    DEFAULT_CONFIG_PATH,
    ConfigError,
    LoadedConfig,
    default_config,
    load_config,
    parse_config,
    validate_config,
)
from vmsilo.config.model import VmConfig, VmsiloConfig
from vmsilo.config.resolved import Resolved, ResolvedInterface, ResolvedVm, resolve
from vmsilo.config.units import parse_duration, parse_size

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_PATH",
    "ConfigError",
    "LoadedConfig",
    "Resolved",
    "ResolvedInterface",
    "ResolvedVm",
    "VmConfig",
    "VmsiloConfig",
    "default_config",
    "load_config",
    "parse_colour",
    "parse_config",
    "parse_duration",
    "parse_size",
    "resolve",
    "validate_config",
]
