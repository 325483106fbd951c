"""System tests boot real VMs (KVM when it works, TCG otherwise) and drive them through the
installed commands. One daemon with one running VM is shared by the tests that only run
commands in it; tests that break or stop VMs use VMs of their own."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.support.daemon import RunningDaemon
from tests.support.images import build_default_image

pytestmark = pytest.mark.system


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/system/" in str(item.fspath):
            item.add_marker(pytest.mark.system)


@pytest.fixture(scope="session")
def test_image() -> None:
    if os.geteuid() != 0:
        pytest.skip("system tests build the guest image with mmdebstrap as root")
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    build_default_image()


# QEMU runs as `nobody` here, as it runs as the configured user on a real system.
SHARED_CONFIG = """
enable = true
user = "nobody"

[vms.alpha]
memory = 1024
cpus = 2
sharedHome = false
gpu = false
sound.playback = false

[vms.ephemeral]
memory = 768
cpus = 1
sharedHome = false
gpu = false
sound.playback = false

[vms.sleepy]
memory = 768
cpus = 1
sharedHome = false
gpu = false
sound.playback = false
rootOverlay.type = "tmpfs"
autoShutdown = { enable = true, after = 3 }

[vms.base]
memory = 512
cpus = 1
sharedHome = false
gpu = false
sound.playback = false
rootOverlay.type = "tmpfs"

[vms.top]
memory = 512
cpus = 1
sharedHome = false
gpu = false
sound.playback = false
rootOverlay.type = "tmpfs"
dependsOn = ["base"]
"""


@pytest.fixture(scope="session")
def daemon(test_image: None) -> Iterator[RunningDaemon]:
    d = RunningDaemon(SHARED_CONFIG)
    d.start()
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture(scope="session")
def alpha(daemon: RunningDaemon) -> RunningDaemon:
    """The shared running VM: started once, used by every test that just runs commands."""
    result = daemon.cli("vm-start", "alpha")
    assert result.returncode == 0, result.stderr.decode() + daemon.log()
    return daemon
