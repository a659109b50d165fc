"""Shared test setup: quiet TensorFlow logs and deterministic seeds."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import tnet_tf  # noqa: E402


def tiny_config(**overrides):
    """The toy TNet of the unit tests: the "tiny" preset at 128 px with [2, 1]
    locations (3 levels); `overrides` as `tnet_tf.get_preset`."""
    return tnet_tf.get_preset("tiny", **{"input_size": 128, "locations": (2, 1), **overrides})


@pytest.fixture(autouse=True)
def _seed_everything():
    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(0)
    np.random.seed(0)
    yield
