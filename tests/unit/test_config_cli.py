"""``vmsilo config check`` / ``show`` as a user runs them: argv in, exit code and output out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmsilo.cli.main import main
from vmsilo.config import load as load_module

EXAMPLE = Path(__file__).parent / "config" / "example.toml"


@pytest.fixture(autouse=True)
def _no_system_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(load_module, "DEFAULT_CONFIG_PATH", tmp_path / "absent.toml")
    monkeypatch.delenv("VMSILO_CONFIG", raising=False)


def test_check_valid_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", "--config", str(EXAMPLE)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{EXAMPLE}: valid, 4 VMs\n"
    assert err == ""


def test_check_reports_every_problem_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'user = "alice"\nenable = true\n[vms.banking]\nmemroy = 1\n'
        '[vms.shopping]\ndependsOn = ["personal"]\n'
        '[vms.personal]\ndependsOn = ["shopping"]\n[vms.personal.network.interfaces.wan]\n'
    )
    assert main(["config", "check", "--config", str(bad)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    # banking fails field validation; the cross-field checks still run over the other VMs.
    assert err.splitlines() == [
        f"vmsilo: {bad}: 3 problems:",
        "  vms.banking.memroy: unknown option; did you mean 'memory'? (or remove it)",
        '  vms.personal.network.interfaces.wan.tap: missing; an interface of type = "tap" '
        "needs a tap table, add tap = {} (optionally with hostAddress or bridge)",
        "  vms.personal.dependsOn: dependency cycle personal -> shopping -> personal; "
        "remove one of these dependencies",
    ]


def test_check_warns_when_disabled(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "off.toml"
    config.write_text('user = "alice"\n[vms.a]\n')
    assert main(["config", "check", "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{config}: valid, 1 VM\n"
    assert "warning: enable = false" in err


def test_config_from_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VMSILO_CONFIG", str(EXAMPLE))
    assert main(["config", "check"]) == 0
    assert capsys.readouterr().out.startswith(str(EXAMPLE))


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", "--config", str(tmp_path / "none.toml")]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("vmsilo: config file ") and "does not exist" in err


def test_show_json_has_derived_fields(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "--json", "--config", str(EXAMPLE)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    document = json.loads(out)
    banking = document["vms"]["banking"]
    assert (banking["id"], banking["cid"]) == (3, 3)
    upstream = banking["network"]["interfaces"]["upstream"]
    assert upstream["pciAddress"] == "00:16.0"
    assert upstream["tap"]["name"] == "banking-22"
    assert upstream["macAddress"] == "52:be:64:bf:cc:65"
    assert upstream["link"]["clientAddress"] == "10.200.0.1/31"


def test_show_tables(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "--config", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "sys-net-23" in out and "00:17.0" in out and "10.200.0.3/31" in out
    assert "via sys-net" in out


def test_default_config_is_announced(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "--json"]) == 0
    out, err = capsys.readouterr()
    assert "using the embedded default" in err
    assert list(json.loads(out)["vms"]) == ["demo"]


def test_show_invalid_config_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[vms.a]\n")
    assert main(["config", "show", "--json", "--config", str(bad)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "user: required option is missing; add it" in err
