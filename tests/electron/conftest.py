"""Shared fixtures: small event libraries (fresh events, never the training library's)."""

import numpy as np
import pytest

from streamer.modalities.electron.physics import build_library


@pytest.fixture(scope="session")
def lib():
    return build_library(3000, seed=99)


@pytest.fixture(scope="session")
def rng():
    return np.random.default_rng(0)
