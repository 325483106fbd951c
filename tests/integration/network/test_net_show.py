"""``vmsilo net show`` as a user runs it: argv in, exit code and output out. The VMs of the
README example are not running here, so every device and table shows as absent; a user error
(an unknown VM) changes nothing and says what exists."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vmsilo.cli.main import main

EXAMPLE = Path(__file__).parents[2] / "unit" / "config" / "example.toml"

pytestmark = [
    pytest.mark.allow_subprocess,
    pytest.mark.skipif(os.geteuid() != 0, reason="listing nftables tables needs root"),
]


def test_net_show_lists_planned_devices_as_absent(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["net", "show", "--config", str(EXAMPLE), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["rulesReadable"] is True
    assert document["vms"], "the example has networked VMs"
    for vm in document["vms"].values():
        for interface in vm["interfaces"].values():
            assert interface["state"] == "absent"
        for table in vm["tables"]:
            assert table["rules"] is None and table["plannedRules"] > 0


def test_net_show_tables(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["net", "show", "--config", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    for title in ("Devices", "nftables", "absent"):
        assert title in out


def test_net_show_of_an_unknown_vm_names_the_known_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["net", "show", "--config", str(EXAMPLE), "nosuch"]) == 1
    err = capsys.readouterr().err
    assert "VM 'nosuch' is not in the config (VMs: " in err
