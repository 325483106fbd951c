"""ImageSpec digest: stable across equivalent inputs, sensitive to every real change; the
config adapter and input validation."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from vmsilo.errors import UserError
from vmsilo.image.spec import GuestFile, ImageSpec, agent_digest, parse_mode, spec_for_vm

BASE = ImageSpec(
    packages=("firefox-esr", "curl"),
    files=(GuestFile("/etc/motd", "hi\n", 0o644),),
    commands=("echo one", "echo two"),
    enable_units=("ssh.service",),
    agent_digest="a" * 64,
)


def test_digest_is_a_fixed_function_of_the_inputs() -> None:
    assert BASE.digest() == BASE.digest()
    assert len(BASE.digest()) == 32
    assert int(BASE.digest(), 16) >= 0


def test_package_and_unit_order_and_duplicates_do_not_matter() -> None:
    shuffled = replace(
        BASE,
        packages=("curl", "firefox-esr", "curl"),
        enable_units=("ssh.service", "ssh.service"),
        mirror=BASE.mirror + "/",
    )
    assert shuffled.digest() == BASE.digest()


@pytest.mark.parametrize(
    "change",
    [
        {"suite": "trixie"},
        {"mirror": "http://ftp.de.debian.org/debian"},
        {"packages": ("curl",)},
        {"files": (GuestFile("/etc/motd", "hi!\n", 0o644),)},
        {"files": (GuestFile("/etc/motd", "hi\n", 0o600),)},
        {"files": (GuestFile("/etc/motd2", "hi\n", 0o644),)},
        {"commands": ("echo two", "echo one")},
        {"enable_units": ()},
        {"agent_digest": "b" * 64},
        {"builder_version": "999"},
    ],
)
def test_every_input_changes_the_digest(change: dict[str, object]) -> None:
    assert replace(BASE, **change).digest() != BASE.digest()  # type: ignore[arg-type]


def test_agent_digest_follows_agent_files(tmp_path: Path) -> None:
    root = tmp_path / "vmsilo"
    (root / "agent").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "agent" / "main.py").write_text("print(1)\n")
    (root / "host").mkdir()
    (root / "host" / "x.py").write_text("host side\n")
    first = agent_digest(root)
    (root / "agent" / "__pycache__").mkdir()
    (root / "agent" / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"junk")
    (root / "host" / "x.py").write_text("host side changed\n")
    assert agent_digest(root) == first, "bytecode and host modules are not part of the agent"
    (root / "agent" / "main.py").write_text("print(2)\n")
    assert agent_digest(root) != first


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"packages": ("Firefox",)}, "guestPrograms: 'Firefox' is not a Debian package name"),
        ({"packages": ("a;rm",)}, "'a;rm' is not a Debian package name"),
        ({"files": (GuestFile("etc/x", ""),)}, "path 'etc/x' must be an absolute path"),
        ({"files": (GuestFile("/etc/../x", ""),)}, "without '..'"),
        ({"files": (GuestFile("/etc/x", "", 0o17777),)}, "is not a file mode"),
        ({"enable_units": ("ssh",)}, "'ssh' is not a systemd unit name"),
        ({"mirror": "ftp://x"}, "mirror: 'ftp://x' is not an http(s):// or file:// URL"),
        ({"suite": "Bookworm!"}, "suite: 'Bookworm!' is not a Debian suite name"),
    ],
)
def test_bad_inputs_are_rejected_with_the_field(change: dict[str, object], message: str) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        replace(BASE, **change).validate("vms.web")  # type: ignore[arg-type]


def test_parse_mode_accepts_toml_forms() -> None:
    assert parse_mode("0644", "f") == 0o644
    assert parse_mode("755", "f") == 0o755
    assert parse_mode(0o600, "f") == 0o600
    with pytest.raises(UserError, match=r"write e\.g"):
        parse_mode("rw-r--r--", "f")


def test_adapter_maps_config_names_and_equal_vms_share_a_digest() -> None:
    module = SimpleNamespace(
        files=[SimpleNamespace(path="/etc/motd", content="hi\n", mode="0600")],
        commands=["echo one"],
        enable_units=["ssh.service"],
    )
    vm_a = SimpleNamespace(guest_programs=["curl", "curl"], guest_config=[module])
    vm_b = SimpleNamespace(guest_programs=["curl"], guest_config=[module])
    spec_a = spec_for_vm("a", vm_a, agent="x")
    assert spec_a.packages == ("curl",)
    assert spec_a.files == (GuestFile("/etc/motd", "hi\n", 0o600),)
    assert spec_a.commands == ("echo one",)
    assert spec_a.enable_units == ("ssh.service",)
    assert spec_a.digest() == spec_for_vm("b", vm_b, agent="x").digest()
    with pytest.raises(UserError, match=r"vms\.c\.guestPrograms: 'BAD'"):
        spec_for_vm("c", SimpleNamespace(guest_programs=["BAD"], guest_config=[]), agent="x")


def test_vms_with_a_wayland_display_get_waypipe() -> None:
    from vmsilo.config import parse_config

    config = parse_config('user = "alice"\n[vms.shown]\n[vms.hidden]\ngpu = false\n')
    shown = spec_for_vm("shown", config.vms["shown"], agent="a")
    hidden = spec_for_vm("hidden", config.vms["hidden"], agent="a")
    assert "waypipe" in shown.packages
    assert "waypipe" not in hidden.packages
