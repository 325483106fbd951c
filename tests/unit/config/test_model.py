"""Defaults and normalisation of upstream's older spellings."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmsilo.config import ConfigError, VmsiloConfig, parse_config

EXAMPLE = Path(__file__).parent / "example.toml"


def one_vm(body: str) -> VmsiloConfig:
    return parse_config(f'user = "alice"\n[vms.test]\n{body}\n')


def test_global_defaults() -> None:
    config = parse_config('user = "alice"\n')
    assert config.enable is False
    assert config.enable_bash_integration is True
    assert config.scheduler_isolation == "full"
    assert config.netvm_range == "10.200.0.0/16"
    assert config.image.suite == "bookworm"
    assert config.image.mirror == "http://deb.debian.org/debian"
    assert config.host_networking.nat.enable is False
    balloond = config.vmsilo_balloond
    assert balloond.poll_interval_seconds == 2.0
    assert balloond.min_poll_interval_seconds == 0.25
    assert balloond.critical_guest_available_bytes == 256 * 1024**2
    assert balloond.guest_available_bias_bytes == 400 * 1024**2
    assert (balloond.critical_host_percent, balloond.psi_ceiling) == (5, 25)
    switch = config.vm_switch
    assert switch.buffer_size_bytes == 256 * 1024
    assert switch.fq_codel_limit_bytes == 2 * 1024**2
    assert switch.fq_codel_quantum_bytes == 1514
    assert switch.fq_codel_target_seconds == pytest.approx(0.005)
    assert switch.fq_codel_interval_seconds == pytest.approx(0.1)


def test_vm_defaults() -> None:
    vm = one_vm("").vms["test"]
    assert (vm.hypervisor, vm.memory, vm.cpus, vm.color) == ("qemu", 1024, 2, "red")
    assert vm.colour_rgb == (255, 0, 0)
    assert vm.wayland_proxy == "wayland-proxy-virtwl"
    assert vm.root_overlay.type == "raw"
    assert vm.root_overlay.size_bytes == 10 * 1024**3
    assert vm.shared_home is True
    assert vm.root_disk_readonly is True
    assert vm.gpu.enabled and vm.gpu.backend == "vhost-device-gpu"
    assert (vm.sound.playback, vm.sound.capture) == (True, False)
    assert (vm.dbus.notifications, vm.dbus.tray) == (True, True)
    assert (vm.virtiofs.disable_sandbox, vm.virtiofs.seccomp_policy) == (False, "kill")
    assert vm.cloud_hypervisor.disable_sandbox is False
    assert (vm.auto_shutdown.enable, vm.auto_shutdown.after) == (False, 60)


def test_qcow2_overlay_is_raw() -> None:
    assert one_vm('rootOverlay.type = "qcow2"').vms["test"].root_overlay.type == "raw"


def test_gpu_switches() -> None:
    assert one_vm("gpu = true").vms["test"].gpu.enabled
    off = one_vm("gpu = false").vms["test"].gpu
    assert not off.enabled
    custom = one_vm(
        'hypervisor = "crosvm"\n'
        'gpu = { opengl = true, context-types = "cross-domain:virgl2", width = 1920 }'
    ).vms["test"]
    assert custom.gpu.opengl and custom.gpu.wayland
    assert custom.gpu.context_types == "cross-domain:virgl2"
    assert custom.gpu.width == 1920


def test_sound_forms() -> None:
    assert one_vm("sound = false").vms["test"].sound.playback is False
    assert one_vm("sound = true").vms["test"].sound.playback is True
    implied = one_vm("sound = { playback = false, capture = true }").vms["test"].sound
    assert (implied.playback, implied.capture) == (True, True)


def test_guest_config_single_table_becomes_list() -> None:
    vm = one_vm('guestConfig = { commands = ["true"], enableUnits = ["ssh.service"] }').vms["test"]
    assert len(vm.guest_config) == 1
    assert vm.guest_config[0].commands == ["true"]
    assert vm.guest_config[0].enable_units == ["ssh.service"]


def test_free_tables_keep_their_keys() -> None:
    vm = one_vm(
        'additionalDisks = [{ path = "/srv/data.img", ro = false, block-size = 4096 }]\n'
        'vhostUser = [{ type = "net", socket = "/run/x.sock" }]'
    ).vms["test"]
    assert vm.additional_disks[0].path == "/srv/data.img"
    assert vm.additional_disks[0].options == {"ro": False, "block-size": 4096}
    assert vm.vhost_user[0].options == {"type": "net", "socket": "/run/x.sock"}


def test_free_table_rejects_nested_values_and_missing_path() -> None:
    with pytest.raises(ConfigError) as caught:
        one_vm('additionalDisks = [{ ro = true }, { path = "/x", opts = { a = 1 } }]')
    assert sorted(caught.value.problems) == [
        "vms.test.additionalDisks[0].path: required option is missing; add it",
        "vms.test.additionalDisks[1]: key 'opts' has a dict value; "
        "use a string, integer or boolean",
    ]


def test_shared_home_path() -> None:
    assert one_vm('sharedHome = "/data/home"').vms["test"].shared_home == "/data/home"


def test_snake_case_names_are_accepted_too() -> None:
    config = VmsiloConfig.model_validate({"user": "alice", "netvm_range": "10.9.0.0/24"})
    assert config.netvm_range == "10.9.0.0/24"


def test_example_config_is_valid() -> None:
    config = parse_config(EXAMPLE.read_text())
    assert sorted(config.vms) == ["banking", "personal", "shopping", "sys-net"]


@pytest.mark.parametrize("translation", ["forbid-guest:0:1000", "map:1000:1000:1",
                                         "squash-host:0:65534:1000"])
def test_id_translations_in_virtiofsd_forms_are_accepted(translation: str) -> None:
    config = parse_config(f"""
user = "alice"
[vms.banking.sharedDirectories.docs]
path = "/srv/docs"
posixAcl = false
translateUid = "{translation}"
""")
    assert config.vms["banking"].shared_directories["docs"].translate_uid == translation
