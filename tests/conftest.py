"""Shared test setup: quiet TensorFlow logs and deterministic seeds."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import tnet_tf  # noqa: E402


def random_batch(count=8, size=64, seed=0):
    """Images [count, size, size, 3] in [-1, 1] and labels [count] of 5 classes."""
    images = tf.random.stateless_uniform([count, size, size, 3], seed=[seed, 1], minval=-1,
                                         maxval=1)
    labels = tf.random.stateless_uniform([count], seed=[seed, 2], maxval=5, dtype=tf.int32)
    return images, labels


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
