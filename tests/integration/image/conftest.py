"""A real guest image, built once and cached in a fixed directory across test runs.

The first build takes about 40 s with a warm apt cache (downloads are kept in
``/var/tmp/vmsilo-test-images/apt-archives``); later runs reuse the image unless the agent or
the builder changed, which changes the digest.
"""

from __future__ import annotations

import os

import pytest

from tests.support.images import (  # TEST_IMAGE_ROOT is re-exported to the test modules
    TEST_IMAGE_ROOT as TEST_IMAGE_ROOT,
)
from tests.support.images import build_default_image, default_spec, image_paths
from vmsilo.host.paths import Paths
from vmsilo.image.build import BuildResult
from vmsilo.image.spec import ImageSpec

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="image builds run mmdebstrap --mode=root and mount (needs root)"
)


def test_paths() -> Paths:
    return image_paths()


def test_spec() -> ImageSpec:
    return default_spec()


@pytest.fixture(scope="session")
def built_image() -> BuildResult:
    if os.geteuid() != 0:
        pytest.skip("image builds need root here")
    return build_default_image()
