"""A real guest image, built once and cached in a fixed directory across test runs.

The first build takes about 40 s with a warm apt cache (downloads are kept in
``/var/tmp/vmsilo-test-images/apt-archives``); later runs reuse the image unless the agent or
the builder changed, which changes the digest.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vmsilo.host.paths import Mode, Paths
from vmsilo.image.build import BuildResult, build_image
from vmsilo.image.spec import ImageSpec, agent_digest

TEST_IMAGE_ROOT = Path(os.environ.get("VMSILO_TEST_IMAGE_ROOT", "/var/tmp/vmsilo-test-images"))

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="image builds run mmdebstrap --mode=root and mount (needs root)"
)


def test_paths() -> Paths:
    return Paths.under(TEST_IMAGE_ROOT, Mode.SYSTEM)


def test_spec() -> ImageSpec:
    return ImageSpec(agent_digest=agent_digest())


@pytest.fixture(scope="session")
def built_image() -> BuildResult:
    if os.geteuid() != 0:
        pytest.skip("image builds need root here")
    return build_image(test_spec(), test_paths())
