"""Choosing the config file and the embedded default."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmsilo.config import ConfigError, load_config
from vmsilo.config import load as load_module
from vmsilo.errors import UserError


@pytest.fixture(autouse=True)
def _no_system_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(load_module, "DEFAULT_CONFIG_PATH", tmp_path / "absent" / "vmsilo.toml")
    monkeypatch.delenv("VMSILO_CONFIG", raising=False)


def write(path: Path, vm: str) -> Path:
    path.write_text(f'user = "alice"\nenable = true\n[vms.{vm}]\n')
    return path


def test_embedded_default_when_nothing_exists() -> None:
    loaded = load_config()
    assert loaded.is_default and loaded.source is None
    config = loaded.config
    assert config.enable is True
    assert list(config.vms) == ["demo"]
    demo = config.vms["demo"]
    assert demo.network.interfaces == {}
    assert demo.shared_home is False
    assert not demo.gpu.enabled
    assert demo.sound.playback is False
    assert (demo.memory, demo.cpus, demo.auto_shutdown.enable) == (1024, 2, False)
    assert config.user


def test_explicit_path_wins_over_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VMSILO_CONFIG", str(write(tmp_path / "env.toml", "fromenv")))
    loaded = load_config(write(tmp_path / "arg.toml", "fromarg"))
    assert list(loaded.config.vms) == ["fromarg"]
    assert loaded.source == tmp_path / "arg.toml"


def test_environment_wins_over_system_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(load_module, "DEFAULT_CONFIG_PATH", write(tmp_path / "etc.toml", "etc"))
    monkeypatch.setenv("VMSILO_CONFIG", str(write(tmp_path / "env.toml", "fromenv")))
    assert list(load_config().config.vms) == ["fromenv"]


def test_system_path_used_when_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(load_module, "DEFAULT_CONFIG_PATH", write(tmp_path / "etc.toml", "etc"))
    loaded = load_config()
    assert not loaded.is_default
    assert list(loaded.config.vms) == ["etc"]


def test_missing_explicit_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"nope\.toml \(from --config\) does not exist"):
        load_config(tmp_path / "nope.toml")


def test_missing_environment_file_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VMSILO_CONFIG", str(tmp_path / "gone.toml"))
    with pytest.raises(UserError, match=r"from \$VMSILO_CONFIG"):
        load_config()


def test_invalid_file_error_carries_source(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('user = "alice"\n[vms.a]\ncpus = 0\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.source == path
    assert caught.value.problems == ["vms.a.cpus: 0 is too small; use a value of at least 1"]
