"""Shared test setup: quiet TensorFlow logs and deterministic seeds."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import tnet_tf  # noqa: E402

# The authors' release-format checkpoints and outputs (../shared beside the repository).
RELEASE_FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                                "release_fixtures")
needs_release_fixtures = pytest.mark.skipif(
    not os.path.isdir(RELEASE_FIXTURES),
    reason=f"the release fixtures are not in {os.path.abspath(RELEASE_FIXTURES)} (../shared "
           f"beside the repository; CI has them)")


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


def release_cell(patch: np.ndarray, index: int, grid_size: int, fraction: float) -> np.ndarray:
    """Cell `index` of `patch` [h, w, C] cut the way the authors' release cuts
    it (numpy, written from its description): the cell side rounded, the
    stride rounded up, the patch zero-padded by the overhang, ceil(half) before."""
    cuts = []
    for side in patch.shape[:2]:
        cell = int(np.round(side * fraction))
        stride = int(np.ceil((side - cell) / (grid_size - 1)))
        total = (grid_size - 1) * stride + cell - side
        before = int(np.ceil(total / 2))
        cuts.append((cell, stride, before, total - before))
    (cell_y, stride_y, top, bottom), (cell_x, stride_x, left, right) = cuts
    padded = np.pad(patch, [[top, bottom], [left, right], [0, 0]])
    row, col = divmod(index, grid_size)
    return padded[row * stride_y:row * stride_y + cell_y, col * stride_x:col * stride_x + cell_x]
