"""The test suite's guest image: built once, cached in a fixed directory across runs.

The first build downloads about 125 MB into ``<root>/apt-archives`` and takes a few minutes;
later runs reuse the image unless the agent or the builder changed (that changes its digest).
VMs of the test configs have no ``guestPrograms``, so they all share this one image.
"""

from __future__ import annotations

import os
from pathlib import Path

from vmsilo.config import parse_config
from vmsilo.host.paths import Mode, Paths
from vmsilo.image.build import BuildResult, build_image
from vmsilo.image.spec import ImageSpec, agent_digest, spec_for_vm

TEST_IMAGE_ROOT = Path(os.environ.get("VMSILO_TEST_IMAGE_ROOT", "/var/tmp/vmsilo-test-images"))


def image_paths() -> Paths:
    return Paths.under(TEST_IMAGE_ROOT, Mode.SYSTEM)


def default_spec() -> ImageSpec:
    return ImageSpec(agent_digest=agent_digest())


def build_default_image() -> BuildResult:
    return build_image(default_spec(), image_paths())


def build_image_for(config_text: str, vm: str) -> BuildResult:
    """The image a VM of a test config boots (e.g. a netvm's, with nftables and unbound)."""
    config = parse_config(config_text)
    spec = spec_for_vm(
        vm, config.vms[vm], suite=config.image.suite, mirror=config.image.mirror
    )
    return build_image(spec, image_paths())
